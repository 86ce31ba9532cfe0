"""Resumable runs: after every case, one atomic checkpoint of where the stream is, the rows so far and the adapter.

Started again with the same command after a kill at any point, the run loads the checkpoint, restores the report's
rows, the per-case values of the key metric and the adapter's state (parameters, optimizer, counters, random
generator, last domain), skips the cases already done without loading them, and goes on; it ends with the same results
(rows, summary and key metric) as a run that was never interrupted. The checkpoint is one file written with
:func:`monai_tta.io.atomic_save`, so it is always a complete old or new version; a kill between the per-case CSV and
the checkpoint only means that one case is done again, from the same state.

In a run sharded over ranks each rank checkpoints its own share (``progress.rank<r>.pt``) and resumes it. A rank whose
share was finished before still runs its (empty) epoch, so that it takes part in the collectives of the other ranks
(the key metric's all-gather, the report's gather) in the same order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.utils import IgniteInfo, min_version, optional_import

from monai_tta.adapters.base import Adapter
from monai_tta.data.checks import case_name
from monai_tta.handlers.case_report import CaseReport
from monai_tta.io import atomic_save

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["RunCheckpoint"]

_VERSION = 2  # 2: the adapter's state_dict holds its guards' states


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, tuple)) or dataclasses.is_dataclass(value)


class RunCheckpoint:
    """Checkpoint an adaptive evaluator after every case and resume from the checkpoint when it exists.

    Attach it after its :class:`~monai_tta.handlers.CaseReport` (it saves the report's rows, so it must see the row
    of the current case). The engine's data must be a :class:`~monai_tta.data.CaseStream` (it knows how many cases
    were consumed and can skip them).

    Args:
        path: the checkpoint file (e.g. ``<output_dir>/<method>/progress.pt``).
        report: the run's case report.
        metrics: MONAI metric handlers of the evaluator by name (e.g. ``MeanDice``) whose per-case values of this
            process are checkpointed and restored, so that the metric of a resumed run covers every case. The bundles'
            key metric, :class:`~monai_tta.handlers.CaseMean`, reads the report's rows, which are restored anyway:
            it needs no entry here. ``None``: none.
        adapter: the adapter whose state is checkpointed; default: the evaluator's inferer (give it when the inferer
            wraps the adapter, e.g. :class:`~monai_tta.inferers.SlidingWindowAdapter`).
        name: logger name.

    Raises:
        TypeError: if a metric handler does not keep its values in a MONAI ``Cumulative`` metric (``metric_fn``).
        ValueError: at the start of a run whose checkpoint was written for other cases, another method or another
            network (the message says which file to delete).
    """

    def __init__(
        self,
        path: str | Path,
        report: CaseReport,
        metrics: Mapping[str, Any] | None = None,
        adapter: Adapter | None = None,
        name: str = "monai_tta.resume",
    ) -> None:
        self.path = Path(path)
        self.report = report
        self.adapter = adapter
        self.metrics = dict(metrics or {})
        for key, handler in self.metrics.items():
            if not hasattr(getattr(handler, "metric_fn", None), "extend"):
                raise TypeError(
                    f"RunCheckpoint metrics[{key!r}] must be a MONAI metric handler (e.g. MeanDice) whose metric_fn is "
                    f"a monai.metrics.Cumulative, got {type(handler).__name__}."
                )
        self.logger = logging.getLogger(name)
        self.resumed_at = 0
        self._fp: dict[str, Any] | None = None
        self._metric_values: dict[str, list[list[torch.Tensor]]] = {}

    def attach(self, engine: Engine) -> None:
        """Register on ``engine``'s events (after the report's handlers and the evaluator's metrics)."""
        engine.add_event_handler(Events.STARTED, self._resume)
        engine.add_event_handler(Events.EPOCH_STARTED, self._restore_metrics)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def _adapter(self, engine: Engine) -> Adapter:
        return self.adapter if self.adapter is not None else engine.inferer

    @staticmethod
    def _stream(engine: Engine) -> Any:
        stream = engine.data_loader
        if not (hasattr(stream, "skip") and hasattr(stream, "position") and hasattr(stream, "cases")):
            raise TypeError(
                "RunCheckpoint needs the evaluator's data to be a monai_tta.data.CaseStream, "
                f"got {type(stream).__name__}."
            )
        return stream

    def _fingerprint(self, engine: Engine) -> dict[str, Any]:
        """What must not change between a run and its resumption: the cases, the method and its settings, and the
        source network (a digest of its weights at the start)."""
        cases = [case_name(d, default=str(i)) for i, d in enumerate(self._stream(engine).cases())]
        adapter = self._adapter(engine)
        settings = {k: repr(v) for k, v in sorted(vars(adapter).items()) if not k.startswith("_") and _plain(v)}
        digest = hashlib.sha256()
        for key, value in engine.network.state_dict().items():
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return {
            "method": self.report.method,
            "adapter": type(adapter).__name__,
            "settings": settings,
            "cases": cases,
            "source": digest.hexdigest(),
        }

    def _local_metric_values(self) -> dict[str, list[list[torch.Tensor]]]:
        """Each metric's per-case values of this process (MONAI keeps them in ``Cumulative._buffers``; its public
        ``get_buffer`` all-gathers across ranks, which cannot run after every case)."""
        values = {}
        for key, handler in self.metrics.items():
            buffers = getattr(handler.metric_fn, "_buffers", None) or []
            values[key] = [[t.detach().cpu().clone() for t in buffer] for buffer in buffers]
        return values

    def _restore_metrics(self, engine: Engine) -> None:
        """At the start of the epoch (after the metrics reset themselves), put back the values of the cases done."""
        for key, buffers in self._metric_values.items():
            if key in self.metrics and buffers and all(buffers):
                self.metrics[key].metric_fn.extend(*[torch.stack(buffer) for buffer in buffers])
        self._metric_values = {}

    def _resume(self, engine: Engine) -> None:
        self.resumed_at = 0
        self._metric_values = {}
        self._fp = self._fingerprint(engine)
        if not self.path.is_file():
            return
        ckpt = torch.load(self.path, map_location="cpu", weights_only=True)
        if ckpt.get("version") != _VERSION or ckpt.get("fingerprint") != self._fp:
            raise ValueError(
                f"{self.path} was written by a run over other cases or with another method; delete it to start over, "
                "or give this run another output folder."
            )
        torch.set_rng_state(ckpt["rng"])
        self._adapter(engine).load_state_dict(engine.network, ckpt["adapter"])
        self.report.rows = list(ckpt["rows"])
        self.report.indices = [int(i) for i in ckpt.get("indices", range(len(self.report.rows)))]
        self._metric_values = dict(ckpt.get("metrics", {}))
        self._stream(engine).skip = self.resumed_at = int(ckpt["position"])
        if self.resumed_at >= len(self._fp["cases"]):  # finished before: an empty epoch, the summary and key metric
            self.logger.info(f"{self.report.method}: all {self.resumed_at} cases were done before ({self.path}).")
            return
        self.logger.info(f"resuming {self.report.method} after case {self.resumed_at} ({self.path}).")

    def save(self, engine: Engine) -> None:
        """Write the checkpoint of the cases done so far (atomically)."""
        atomic_save(
            {
                "version": _VERSION,
                "fingerprint": self._fp if self._fp is not None else self._fingerprint(engine),
                "position": int(self._stream(engine).position),
                "rows": list(self.report.rows),
                "indices": list(self.report.indices),
                "metrics": self._local_metric_values(),
                "adapter": self._adapter(engine).state_dict(engine.network),
                "rng": torch.get_rng_state(),
            },
            self.path,
        )
