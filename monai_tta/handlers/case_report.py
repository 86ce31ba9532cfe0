"""The per-case row of an adaptive evaluator (status and reason, Dice, surface distances, the adapter's statistics),
written as the run goes, and a per-domain summary at the end: one schema for the bundles and the benchmark."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monai.data import MetaTensor
from monai.utils import IgniteInfo, min_version, optional_import

from monai_tta import distributed
from monai_tta.data.guarded import FAILURE_KEY, is_failure
from monai_tta.data.keys import CaseStatus, DataKeys
from monai_tta.engines.evaluator import ADAPT_KEY, CASE_METRICS, CaseEvents
from monai_tta.handlers.refusals import (
    N_FALLBACK,
    N_UPDATE_ONLY,
    count_fallbacks,
    count_update_only,
    refusal_warnings,
)
from monai_tta.io import atomic_write_json, atomic_write_text
from monai_tta.metrics import asd_per_channel, dice_per_channel, hd95_per_channel
from monai_tta.reports import MEAN_DICE, markdown_table, plot_domain_dice, plot_stream_stats, summarize, write_case_csv

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["CaseReport", "SUMMARY_FILES", "REASON", "row_stats"]

#: column of the reason of a failed case (absent from a scored case's row).
REASON = CaseStatus.ERROR.value

#: files written only once every case is scored (removed at the start of a run, so none is ever stale or partial).
SUMMARY_FILES = ("summary.json", "summary.md", "dice_per_domain.png", "stream.png")


def row_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """The adapter's statistics as row columns: numbers (flags as 0 / 1) as Python floats, text as it is."""
    kept = (bool, int, float, str)
    return {str(k): float(v) if not isinstance(v, str) else v for k, v in stats.items() if isinstance(v, kept)}


class CaseReport:
    """Write one row per case as the evaluator goes, and a per-domain summary at the end.

    The row schema (one for the bundles and the benchmark): ``case_id``, ``domain``, ``method``, ``status`` (``ok``
    or ``failed``), ``error`` (the reason a case failed; only in a failed case's row), Dice per channel
    (``dice_<channel>``, percent, :func:`~monai_tta.metrics.dice_per_channel`) and their mean ``dice_mean``, the
    average surface distance in voxels
    (``asd_*``, when ``compute_asd``), the 95th-percentile Hausdorff distance (``hd95_*``, when ``compute_hd95``; in
    the prediction's physical units when it is a ``MetaTensor``, else in voxels), then the adapter's statistics as the
    adapter gave them (numbers as floats, flags as 0 / 1, text as text). A case without a label has no score columns.
    Dice is computed here only: the evaluator's key metric (:class:`~monai_tta.handlers.CaseMean`) and the trackers
    read the rows.

    The row is computed at :attr:`~monai_tta.engines.CaseEvents.CASE_COMPLETED` (after post-processing, before
    ``ITERATION_COMPLETED``), so every per-iteration handler sees it whatever the order of the handlers; it is the one
    writer of ``engine.state.case_metrics`` (the row's numbers, logged by the trackers). A case that failed to load or
    validate reaches it through the engine (:class:`~monai_tta.engines.AdaptiveEvaluator`) and gets a row with
    ``status=failed`` and its reason, in stream order. The CSV is rewritten (atomically) after every case, so an
    interrupted run keeps the cases it scored. At completion it writes ``summary.json`` (per domain: the means over the
    scored cases, ``n`` and ``n_failed``), ``summary.md``, ``dice_per_domain.png`` and ``stream.png`` (Dice and
    adaptation statistics along the stream, per domain) and logs the per-domain table. Each case's scalars also go to
    ``engine.state.case_metrics``, which trackers log.

    In a run sharded over ranks (:mod:`monai_tta.distributed`) each rank writes its rows to ``cases.rank<r>.csv`` as
    it goes; at completion rank 0 gathers every rank's rows, checks that each case of the stream is there exactly once
    (and, with ``expected_cases``, that none is missing), puts them in stream order and writes the same ``cases.csv``
    and summary files as one process. If a rank dies the run fails before that point, so no summary is written; rank 0
    removes the summary files of an earlier run when a run starts (in a sharded run also the merged ``cases.csv`` and
    the ``cases.rank<k>.csv`` of ranks it does not have).

    Args:
        output_dir: folder for ``cases.csv`` and the summary files.
        method: name of the method (a column of the CSV).
        channel_names: one name per output channel (e.g. ``["disc", "cup"]``).
        pred_key: key of the post-processed, binarised prediction.
        label_key: key of the label.
        compute_asd: also compute the average surface distance.
        compute_hd95: also compute the 95th-percentile Hausdorff distance (:func:`~monai_tta.metrics.hd95_per_channel`),
            with the voxel size of the prediction's affine.
        expected_cases: number of cases of the whole stream, or a function returning it, checked at completion
            (``None``: not checked).
        plots: also write ``dice_per_domain.png`` and ``stream.png`` at completion.
        name: logger name.

    Raises:
        ValueError: if ``channel_names`` is empty.
        RuntimeError: at completion, if the gathered rows miss a case or hold one twice.
    """

    def __init__(
        self,
        output_dir: str | Path,
        method: str,
        channel_names: Sequence[str] = ("disc", "cup"),
        pred_key: str = DataKeys.PRED,
        label_key: str = DataKeys.LABEL,
        compute_asd: bool = True,
        compute_hd95: bool = False,
        expected_cases: int | Callable[[], int] | None = None,
        plots: bool = True,
        name: str = "monai_tta.report",
    ) -> None:
        if not channel_names:
            raise ValueError("channel_names must name at least one channel.")
        self.output_dir = Path(output_dir)
        self.method = method
        self.channel_names = list(channel_names)
        self.pred_key, self.label_key = pred_key, label_key
        self.compute_asd = compute_asd
        self.compute_hd95 = compute_hd95
        self.expected_cases = expected_cases
        self.plots = plots
        self.logger = logging.getLogger(name)
        self.rows: list[dict[str, Any]] = []
        self.indices: list[int] = []
        self.summary: dict[str, dict[str, float]] = {}

    @property
    def rows_path(self) -> Path:
        """The CSV this process writes as it goes: ``cases.csv``, or ``cases.rank<r>.csv`` in a sharded run."""
        if distributed.get_world_size() > 1:
            return self.output_dir / f"cases.rank{distributed.get_rank()}.csv"
        return self.output_dir / "cases.csv"

    def attach(self, engine: Engine) -> None:
        """Register on ``engine``'s events."""
        engine.add_event_handler(Events.STARTED, self._started)
        event = CaseEvents.CASE_COMPLETED if CaseEvents.CASE_COMPLETED in engine._allowed_events else None
        engine.add_event_handler(event or Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        self.rows, self.indices = [], []
        if not distributed.is_main_process():
            return
        world = distributed.get_world_size()
        stale = [self.output_dir / name for name in SUMMARY_FILES]
        if world > 1:  # the merged cases.csv is written with the summary; rows of ranks this run does not have
            stale.append(self.output_dir / "cases.csv")
            for path in self.output_dir.glob("cases.rank*.csv"):
                rank = path.name[len("cases.rank") : -len(".csv")]
                stale += [path] if rank.isdigit() and int(rank) >= world else []
        for path in stale:
            path.unlink(missing_ok=True)

    def __call__(self, engine: Engine) -> None:
        """Compute and write the rows of the engine's current cases."""
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        new = []
        for item, data in zip(outputs, batch):
            new.append(self.record(item, data, len(self.rows)))
            self.indices.append(int(data.get(DataKeys.STREAM_INDEX, len(self.rows))))
            self.rows.append(new[-1])
        write_case_csv(self.rows_path, self.rows)
        metrics = {}
        for key in new[0] if new else []:
            values = [row[key] for row in new if isinstance(row.get(key), float)]
            if len(values) == len(new):
                metrics[key] = sum(values) / len(values)
        setattr(engine.state, CASE_METRICS, metrics)

    def record(self, item: dict[str, Any], data: dict[str, Any], index: int) -> dict[str, Any]:
        """The row of a decollated output ``item`` (or a failure record) and its input ``data``."""
        row: dict[str, Any] = {
            DataKeys.CASE_ID.value: str(data.get(DataKeys.CASE_ID, index)),
            DataKeys.DOMAIN.value: str(data.get(DataKeys.DOMAIN, "all")),
            "method": self.method,
            CaseStatus.KEY.value: CaseStatus.OK.value,
        }
        if is_failure(item):
            row.update({CaseStatus.KEY.value: CaseStatus.FAILED.value, REASON: str(item[FAILURE_KEY])})
            return row
        pred, label = item[self.pred_key], item.get(self.label_key)
        if label is not None:
            if len(pred) != len(self.channel_names):
                raise ValueError(f"prediction has {len(pred)} channels but {len(self.channel_names)} names were given.")
            self._scores(row, "dice", dice_per_channel(pred, label))
            if self.compute_asd:
                self._scores(row, "asd", asd_per_channel(pred, label))
            if self.compute_hd95:
                spacing = pred.pixdim.tolist() if isinstance(pred, MetaTensor) else None
                self._scores(row, "hd95", hd95_per_channel(pred, label, spacing))
        row.update(row_stats(item.get(ADAPT_KEY) or {}))
        return row

    def _scores(self, row: dict[str, Any], name: str, values: Sequence[float]) -> None:
        row.update({f"{name}_{c}": float(v) for c, v in zip(self.channel_names, values)})
        row[f"{name}_mean"] = sum(values) / len(values)

    def _gather(self) -> bool:
        """On rank 0 of a sharded run, replace ``self.rows`` with every rank's rows in stream order and write them.

        Returns:
            whether this process writes the summary (rank 0).
        """
        gathered = distributed.gather_objects((self.indices, self.rows))
        if gathered is None:
            return False
        if len(gathered) == 1:
            return True
        pairs = sorted(((i, row) for indices, rows in gathered for i, row in zip(indices, rows)), key=lambda p: p[0])
        indices = [i for i, _ in pairs]
        twice = sorted(i for i, n in Counter(indices).items() if n > 1)
        count = self.expected_cases() if callable(self.expected_cases) else self.expected_cases
        expected = range(count) if count is not None else range(len(set(indices)))
        missing = sorted(set(expected) - set(indices))
        if twice or missing or len(indices) != len(expected):
            raise RuntimeError(
                f"{self.method}: the gathered per-case rows are incomplete: stream cases {missing} are missing and "
                f"{twice} appear twice ({len(indices)} rows from {len(gathered)} ranks). No summary was written; "
                f"rerun the same command."
            )
        self.rows = [row for _, row in pairs]
        self.indices = indices
        write_case_csv(self.output_dir / "cases.csv", self.rows)
        return True

    def _completed(self, engine: Engine) -> None:
        if not self._gather() or not self.rows:
            return
        write_case_csv(self.output_dir / "cases.csv", self.rows)
        scored = [r for r in self.rows if r.get(CaseStatus.KEY.value) != CaseStatus.FAILED.value]
        self.summary = summarize(scored)
        for row in self.rows:
            if row.get(CaseStatus.KEY.value) == CaseStatus.FAILED.value:
                entry = self.summary.setdefault(str(row[DataKeys.DOMAIN]), {"n": 0})
                entry["n_failed"] = entry.get("n_failed", 0) + 1
        if "overall" in self.summary:
            self.summary["overall"]["n_failed"] = len(self.rows) - len(scored)
        fallbacks = count_fallbacks(scored)
        for domain, (refused, _) in fallbacks.items():
            self.summary.setdefault(domain, {"n": 0})[N_FALLBACK] = refused
        if fallbacks and "overall" in self.summary:
            self.summary["overall"][N_FALLBACK] = sum(r for r, _ in fallbacks.values())
        update_only = count_update_only(scored)
        for domain, (kept, _) in update_only.items():
            self.summary.setdefault(domain, {"n": 0})[N_UPDATE_ONLY] = kept
        if update_only and "overall" in self.summary:
            self.summary["overall"][N_UPDATE_ONLY] = sum(k for k, _ in update_only.values())
        for line in refusal_warnings(self.method, fallbacks, update_only):
            self.logger.warning(line)
        atomic_write_json({self.method: self.summary}, self.output_dir / "summary.json")
        if not scored or MEAN_DICE not in scored[0]:
            return
        cols = [f"dice_{c}" for c in self.channel_names] + [MEAN_DICE]
        cols += ["asd_mean"] if self.compute_asd else []
        cols += ["hd95_mean"] if self.compute_hd95 else []
        cols += ["n_failed"] if len(scored) < len(self.rows) else []
        cols += [N_FALLBACK] if fallbacks else []
        cols += [N_UPDATE_ONLY] if update_only else []
        table = markdown_table(self.summary, cols, row_title="domain")
        atomic_write_text(f"# {self.method}\n\n{table}\n", self.output_dir / "summary.md")
        domains = [d for d in self.summary if d != "overall" and MEAN_DICE in self.summary[d]]
        self.logger.info(f"{self.method}: per-domain summary\n{table}")
        if not self.plots:
            return
        plot_domain_dice(
            {self.method: {d: self.summary[d][MEAN_DICE] for d in domains}},
            domains,
            self.output_dir / "dice_per_domain.png",
            title=f"{self.method}: mean Dice per domain",
        )
        plot_stream_stats(self.rows, self.output_dir / "stream.png", title=f"{self.method}: along the stream")
