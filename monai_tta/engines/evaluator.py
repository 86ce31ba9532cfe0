"""The adaptive evaluator: a MONAI ``SupervisedEvaluator`` that runs an adapter over a stream of cases."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.handlers import MLFlowHandler, TensorBoardStatsHandler
from monai.utils import IgniteInfo, min_version, optional_import

from monai_tta.adapters.base import Adapter
from monai_tta.data.keys import DataKeys
from monai_tta.inferers.sliding_window import SlidingWindowAdapter

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["AdaptiveEvaluator", "ADAPT_KEY", "CASE_METRICS", "TRACKERS", "batch_domain", "stats_to_batch"]

#: key of ``engine.state.output`` (and of each decollated item) that holds the adapter's statistics for the case.
ADAPT_KEY = "adapt"

#: attribute of ``engine.state`` holding the current case's scalars for trackers: the adapter's statistics, plus
#: Dice and surface distance when a :class:`~monai_tta.handlers.CaseReport` is attached.
CASE_METRICS = "case_metrics"

#: MONAI tracking handlers that the evaluator makes log every case (``--tracking mlflow``, TensorBoard).
TRACKERS: tuple[type, ...] = (MLFlowHandler, TensorBoardStatsHandler)


def batch_domain(batchdata: Any, key: str = DataKeys.DOMAIN) -> Any:
    """The domain of a collated batch, or ``None`` when the batch carries none.

    Raises:
        ValueError: if the batch mixes several domains (a case must come from one domain).
    """
    if not isinstance(batchdata, dict) or key not in batchdata:
        return None
    value = batchdata[key]
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        unique = list(dict.fromkeys(value))
        if len(unique) > 1:
            raise ValueError(f"a batch mixes domains {unique}; use batch_size=1 or group batches by domain.")
        return unique[0] if unique else None
    return value


def stats_to_batch(stats: dict[str, Any], batch_size: int) -> dict[str, torch.Tensor]:
    """Numeric adapter statistics as ``(batch_size,)`` tensors, so that decollation gives each case its own copy."""
    batched = {}
    for key, value in stats.items():
        if isinstance(value, (bool, int, float)):
            dtype = torch.bool if isinstance(value, bool) else torch.float64
            batched[str(key)] = torch.full((batch_size,), value, dtype=dtype)
    return batched


class AdaptiveEvaluator(SupervisedEvaluator):
    """Evaluator whose ``inferer`` is an :class:`~monai_tta.adapters.base.Adapter`.

    Before each case it gives the adapter the case's domain (so the ``"domain"`` setting resets at domain
    boundaries; a case tagged with ``stream_segment`` by :func:`monai_tta.distributed.shard_stream` gives its segment
    instead, so a rank holding two segments of one domain resets between them as one process would); after the
    adapter's call it puts the adapter's statistics under ``engine.state.output["adapt"]`` (before post-processing, so
    every decollated item carries them) and the case's scalars under ``engine.state.case_metrics``.

    Every MONAI tracking handler among ``val_handlers`` (``MLFlowHandler``, as added by ``monai.bundle run
    --tracking mlflow``, or ``TensorBoardStatsHandler``) is made to log ``engine.state.case_metrics`` at every case,
    step = the case's iteration, besides the epoch's metrics it logs anyway. All other arguments are those of
    :class:`monai.engines.SupervisedEvaluator`; the adapter enables gradients itself inside the evaluator's
    ``no_grad`` block.

    Args:
        device: device of the run.
        val_data_loader: the stream of cases (in order; ``shuffle=False``).
        network: the source network.
        inferer: the adapter, or a :class:`~monai_tta.inferers.SlidingWindowAdapter` for volumes.
        domain_key: data key of the domain name.
        track_cases: make the tracking handlers among ``val_handlers`` log every case.
        kwargs: other :class:`monai.engines.SupervisedEvaluator` arguments.

    Raises:
        TypeError: if ``inferer`` is neither an ``Adapter`` nor a ``SlidingWindowAdapter``.
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Any,
        network: torch.nn.Module,
        inferer: Adapter | SlidingWindowAdapter,
        domain_key: str = DataKeys.DOMAIN,
        track_cases: bool = True,
        **kwargs: Any,
    ) -> None:
        if not isinstance(inferer, (Adapter, SlidingWindowAdapter)):
            raise TypeError(
                f"inferer must be a monai_tta Adapter or SlidingWindowAdapter, got {type(inferer).__name__}."
            )
        super().__init__(device=device, val_data_loader=val_data_loader, network=network, inferer=inferer, **kwargs)
        self.domain_key = domain_key
        self.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._record_stats)
        if track_cases:
            for handler in _as_list(kwargs.get("val_handlers")):
                if isinstance(handler, TRACKERS):
                    self._log_cases_with(handler)

    def _log_cases_with(self, handler: Any) -> None:
        """Make a MONAI tracking handler log ``state.case_metrics`` at every iteration (after the case report)."""
        handler.output_transform = lambda _output: dict(getattr(self.state, CASE_METRICS, None) or {}) or None
        if not self.has_event_handler(handler.iteration_completed, Events.ITERATION_COMPLETED):
            self.add_event_handler(Events.ITERATION_COMPLETED, handler.iteration_completed)

    def _record_stats(self, engine: Engine) -> None:
        output = engine.state.output
        batch_size = len(output[DataKeys.IMAGE]) if DataKeys.IMAGE in output else 1
        output[ADAPT_KEY] = stats_to_batch(engine.inferer.last_stats, batch_size)
        stats = engine.inferer.last_stats.items()
        setattr(engine.state, CASE_METRICS, {str(k): float(v) for k, v in stats if isinstance(v, (bool, int, float))})

    def _iteration(self, engine: AdaptiveEvaluator, batchdata: dict[str, Any]) -> dict:
        key = DataKeys.STREAM_SEGMENT if isinstance(batchdata, dict) and DataKeys.STREAM_SEGMENT in batchdata else None
        engine.inferer.set_domain(batch_domain(batchdata, key or engine.domain_key))
        return super()._iteration(engine, batchdata)


def _as_list(handlers: Any) -> list[Any]:
    if handlers is None:
        return []
    return list(handlers) if isinstance(handlers, Sequence) else [handlers]
