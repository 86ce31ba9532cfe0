"""Non-finite guard: an update whose loss, gradient or new parameters are not finite is undone.

One NaN reaching the optimizer (from an overflow, a degenerate batch, a learning rate gone wrong) would otherwise turn
every adapted parameter, and every later prediction, into NaN. :class:`UpdateGuard` keeps a copy of the updated
parameters and of the optimizer state before a case's update; after it, one check (a single device-to-host transfer)
looks at the loss values reported in the statistics, the gradients left on the parameters and the parameters
themselves, and if any is not finite it puts the copy back, so the adapter carries on from its previous state.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from monai_tta.adapters.stats import StatKeys

if TYPE_CHECKING:
    from monai_tta.adapters.base import AdapterState

__all__ = ["UpdateGuard", "nonfinite_part", "LOSS_KEYS"]

#: the statistics that hold loss values.
LOSS_KEYS = (StatKeys.LOSS, StatKeys.AUX_LOSS, StatKeys.PSEUDO_LOSS)


def nonfinite_part(stats: Mapping[str, Any], params: list[torch.nn.Parameter]) -> str | None:
    """Which part of an update is not finite: ``"loss"`` (one of :data:`LOSS_KEYS` in ``stats``), ``"gradient"``,
    ``"parameter"``, or ``None`` when all are finite.

    Args:
        stats: the statistics the update reported.
        params: the updated parameters (with the gradients the update left on them, if any).
    """
    for key in LOSS_KEYS:
        value = stats.get(key)
        if isinstance(value, float) and not math.isfinite(value):
            return "loss"
    if not params:
        return None
    grads = [p.grad for p in params if p.grad is not None]
    flags = [torch.isfinite(g).all() for g in grads] + [torch.isfinite(p.detach()).all() for p in params]
    ok = torch.stack(flags).tolist()
    if not all(ok[: len(grads)]):
        return "gradient"
    if not all(ok[len(grads) :]):
        return "parameter"
    return None


class UpdateGuard:
    """Copy of an adapter state's parameters and optimizer state, taken before an update, to undo it.

    Args:
        state: the adapter state about to be updated.
    """

    def __init__(self, state: AdapterState) -> None:
        self.params = [p.detach().clone() for p in state.params]
        optimizer = state.optimizer
        self.optimizer = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None

    def check(self, state: AdapterState, stats: Mapping[str, Any]) -> str | None:
        """The non-finite part of the update just made (see :func:`nonfinite_part`), ``None`` if all is finite."""
        return nonfinite_part(stats, state.params)

    @torch.no_grad()
    def restore(self, state: AdapterState) -> None:
        """Put the parameters and the optimizer state back as they were before the update; drop the gradients."""
        for p, v in zip(state.params, self.params):
            p.copy_(v)
            p.grad = None
        if self.optimizer is not None and state.optimizer is not None:
            state.optimizer.load_state_dict(self.optimizer)
