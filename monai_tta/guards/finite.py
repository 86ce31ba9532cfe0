"""Non-finite rollback: an update whose loss, gradient or new parameters are not finite is undone.

One NaN reaching the optimizer (from an overflow, a degenerate batch, a learning rate gone wrong) would otherwise turn
every adapted parameter, and every later prediction, into NaN. After each update, :class:`NonFiniteRollback` makes one
check (a single device-to-host transfer) of the loss values reported in the statistics, the gradients left on the
parameters and the parameters themselves; if any is not finite it answers :attr:`~monai_tta.guards.Verdict.UNDO`, and
the adapter puts back the parameters and the optimizer state of before the update (it carries on from its previous
state). ``last_stats`` records ``nonfinite`` and, when it fired, ``nonfinite_part``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from monai_tta.adapters.stats import StatKeys
from monai_tta.guards.protocol import Guard, GuardContext, Verdict

__all__ = ["NonFiniteRollback", "nonfinite_part", "LOSS_KEYS"]

#: the statistics that hold loss values.
LOSS_KEYS = (StatKeys.LOSS, StatKeys.AUX_LOSS, StatKeys.PSEUDO_LOSS)


def nonfinite_part(stats: Mapping[str, Any], params: Sequence[torch.nn.Parameter]) -> str | None:
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


@dataclass
class NonFiniteRollback(Guard):
    """Undo an update whose loss, gradient or parameters are not finite (see the module docstring). No state."""

    may_undo = True

    def after_update(self, ctx: GuardContext, state: None) -> Verdict:
        bad = nonfinite_part(ctx.stats, ctx.params)
        ctx.stats[StatKeys.NONFINITE] = bad is not None
        if bad is None:
            return Verdict.PASS
        ctx.stats[StatKeys.NONFINITE_PART] = bad
        return Verdict.UNDO
