"""The adaptive evaluator: a MONAI ``SupervisedEvaluator`` that runs an adapter over a stream of cases."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.utils import IgniteInfo, min_version, optional_import

from monai_tta.adapters.base import Adapter
from monai_tta.inferers.sliding_window import SlidingWindowAdapter
from monai_tta.keys import DataKeys

if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["AdaptiveEvaluator", "ADAPT_KEY", "batch_domain", "stats_to_batch"]

#: key of ``engine.state.output`` (and of each decollated item) that holds the adapter's statistics for the case.
ADAPT_KEY = "adapt"


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
    boundaries); after the adapter's call it puts the adapter's statistics under ``engine.state.output["adapt"]``
    (before post-processing, so every decollated item carries them). All other arguments are those of
    :class:`monai.engines.SupervisedEvaluator`; the adapter enables gradients itself inside the evaluator's
    ``no_grad`` block.

    Args:
        device: device of the run.
        val_data_loader: the stream of cases (in order; ``shuffle=False``).
        network: the source network.
        inferer: the adapter, or a :class:`~monai_tta.inferers.SlidingWindowAdapter` for volumes.
        domain_key: data key of the domain name.
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
        **kwargs: Any,
    ) -> None:
        if not isinstance(inferer, (Adapter, SlidingWindowAdapter)):
            raise TypeError(
                f"inferer must be a monai_tta Adapter or SlidingWindowAdapter, got {type(inferer).__name__}."
            )
        super().__init__(device=device, val_data_loader=val_data_loader, network=network, inferer=inferer, **kwargs)
        self.domain_key = domain_key
        self.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._record_stats)

    def _record_stats(self, engine: Engine) -> None:
        output = engine.state.output
        batch_size = len(output[DataKeys.IMAGE]) if DataKeys.IMAGE in output else 1
        output[ADAPT_KEY] = stats_to_batch(engine.inferer.last_stats, batch_size)

    def _iteration(self, engine: AdaptiveEvaluator, batchdata: dict[str, Any]) -> dict:
        engine.inferer.set_domain(batch_domain(batchdata, engine.domain_key))
        return super()._iteration(engine, batchdata)
