"""The adaptive evaluator: a MONAI ``SupervisedEvaluator`` that runs an adapter over a stream of cases."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.handlers import MLFlowHandler, TensorBoardStatsHandler
from monai.utils import IgniteInfo, min_version, optional_import

from monai_tta.adapters.base import Adapter
from monai_tta.data.guarded import FAILURE_KEY, is_failure
from monai_tta.data.keys import DataKeys
from monai_tta.inferers.sliding_window import SlidingWindowAdapter

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
EventEnum, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "EventEnum", as_type="base")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["AdaptiveEvaluator", "ADAPT_KEY", "CASE_METRICS", "TRACKERS", "CaseEvents", "batch_domain", "numeric_stats"]

#: key of each decollated output item (and of ``engine.state``) that holds the adapter's statistics for the case, as
#: the adapter gave them (Python values, never tensors).
ADAPT_KEY = "adapt"

#: attribute of ``engine.state`` holding the current case's scalars for trackers; written only by
#: :class:`~monai_tta.handlers.CaseReport` (the case's row).
CASE_METRICS = "case_metrics"

#: MONAI tracking handlers that the evaluator makes log every case (``--tracking mlflow``, TensorBoard).
TRACKERS: tuple[type, ...] = (MLFlowHandler, TensorBoardStatsHandler)


class CaseEvents(EventEnum):
    """Events of :class:`AdaptiveEvaluator`.

    ``ADAPT_STARTED``: the case is on the device, the adapter's call starts (timing probes start here).
    ``CASE_COMPLETED``: the case is done (adapted, predicted and post-processed, or failed to load): its row is
    written here, so that every ``ITERATION_COMPLETED`` handler sees it whatever their order.
    """

    ADAPT_STARTED = "adapt_started"
    CASE_COMPLETED = "case_completed"


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


def numeric_stats(stats: Mapping[str, Any]) -> dict[str, float]:
    """The numeric adapter statistics as Python floats (flags as 0 / 1)."""
    return {str(k): float(v) for k, v in stats.items() if isinstance(v, (bool, int, float))}


class AdaptiveEvaluator(SupervisedEvaluator):
    """Evaluator whose ``inferer`` is an :class:`~monai_tta.adapters.base.Adapter`.

    Before each case it gives the adapter the case's domain (so the ``"domain"`` setting resets at domain
    boundaries; a case tagged with ``stream_segment`` by :func:`monai_tta.distributed.shard_stream` gives its segment
    instead, so a rank holding two segments of one domain resets between them as one process would). After the
    adapter's call it keeps the adapter's statistics as they are (Python values) under ``engine.state.adapt`` and,
    after post-processing, under ``"adapt"`` of every decollated output item. A case that its
    :class:`~monai_tta.data.CaseStream` could not load or validate comes through the engine as an iteration whose
    output items are its failure records (``case_id``, ``domain``, ``failure``: the reason); the network is not run.
    Every case ends with :attr:`CaseEvents.CASE_COMPLETED`, before ``ITERATION_COMPLETED``.

    Every MONAI tracking handler among ``val_handlers`` (``MLFlowHandler``, as added by ``monai.bundle run
    --tracking mlflow``, or ``TensorBoardStatsHandler``) is made to log ``engine.state.case_metrics`` (the case's
    row, written by :class:`~monai_tta.handlers.CaseReport`; the numeric adapter statistics when no report is
    attached) at every case, step = the case's iteration, besides the epoch's metrics it logs anyway. All other
    arguments are those of :class:`monai.engines.SupervisedEvaluator`; the adapter enables gradients itself inside the
    evaluator's ``no_grad`` block.

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
        # registered before the workflow attaches the handlers, which may listen to them
        kwargs["event_names"] = [*(kwargs.get("event_names") or []), CaseEvents]
        super().__init__(device=device, val_data_loader=val_data_loader, network=network, inferer=inferer, **kwargs)
        self.domain_key = domain_key
        self.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._record_stats)
        # registered after the post-processing (which the workflow registered in its constructor)
        self.add_event_handler(IterationEvents.MODEL_COMPLETED, self._stats_to_items)
        self._prepare = self.prepare_batch
        self.prepare_batch = self._prepare_and_signal
        if track_cases:
            for handler in _as_list(kwargs.get("val_handlers")):
                if isinstance(handler, TRACKERS):
                    self._log_cases_with(handler)

    def _prepare_and_signal(self, *args: Any, **kwargs: Any) -> Any:
        """The workflow's ``prepare_batch``, then :attr:`CaseEvents.ADAPT_STARTED` (the case is on the device)."""
        prepared = self._prepare(*args, **kwargs)
        self.fire_event(CaseEvents.ADAPT_STARTED)
        return prepared

    def _case_metrics(self) -> dict[str, Any] | None:
        metrics = getattr(self.state, CASE_METRICS, None)
        if metrics is None:
            metrics = numeric_stats(getattr(self.state, ADAPT_KEY, None) or {})
        return dict(metrics) or None

    def _log_cases_with(self, handler: Any) -> None:
        """Make a MONAI tracking handler log the case's scalars at every iteration."""
        handler.output_transform = lambda _output: self._case_metrics()
        if not self.has_event_handler(handler.iteration_completed, Events.ITERATION_COMPLETED):
            self.add_event_handler(Events.ITERATION_COMPLETED, handler.iteration_completed)

    def _record_stats(self, engine: Engine) -> None:
        setattr(engine.state, ADAPT_KEY, dict(engine.inferer.last_stats))

    def _stats_to_items(self, engine: Engine) -> None:
        items = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for item in items:
            if isinstance(item, dict):
                item[ADAPT_KEY] = dict(getattr(engine.state, ADAPT_KEY, None) or {})

    def _iteration(self, engine: AdaptiveEvaluator, batchdata: dict[str, Any]) -> Any:
        if is_failure(batchdata):
            engine.state.batch = engine.state.output = _failure_items(batchdata)
        else:
            segmented = isinstance(batchdata, dict) and DataKeys.STREAM_SEGMENT in batchdata
            key = DataKeys.STREAM_SEGMENT if segmented else None
            engine.inferer.set_domain(batch_domain(batchdata, key or engine.domain_key))
            super()._iteration(engine, batchdata)
        engine.fire_event(CaseEvents.CASE_COMPLETED)
        return engine.state.output


def _failure_items(batchdata: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The failure records of a collated failure batch, one per case."""
    n = len(batchdata[FAILURE_KEY]) if isinstance(batchdata[FAILURE_KEY], (list, tuple)) else 1
    return [{str(k): (v[i] if isinstance(v, (list, tuple)) else v) for k, v in batchdata.items()} for i in range(n)]


def _as_list(handlers: Any) -> list[Any]:
    if handlers is None:
        return []
    return list(handlers) if isinstance(handlers, Sequence) else [handlers]
