"""What an adapter keeps for one network: the parameters it updates and their source values, the optimizer, the
counters, the method's own state and its guards' states."""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from monai_tta.norms import AdaptiveBatchNorm

__all__ = ["AdapterState", "UpdateCopy"]

_PLAIN = (bool, int, float, str, torch.Tensor)

#: a copy of the updated parameters and of the optimizer state, taken before an update to undo it.
UpdateCopy = tuple[list[torch.Tensor], dict[str, Any] | None]


@dataclass
class AdapterState:
    """Per-network state of an adapter.

    Attributes:
        network: weak reference to the adapted network.
        params: the parameters the method updates.
        norms: the adaptive normalisation layers of the network.
        snapshot: source values of ``params`` (restored by ``reset``).
        optimizer: optimizer over ``params`` (``None`` for gradient-free methods).
        step: number of cases adapted since the last reset.
        seen: number of cases seen (the warm-up counter of the ``"warmup"`` norm regime); the base class never
            resets it, a method may (VPTTA does, in ``reset_state``).
        extra: method-specific state (memory bank, prompt, ...).
        guards: the state of each of the adapter's guards, in their order (see :mod:`monai_tta.guards`).
    """

    network: weakref.ref
    params: list[nn.Parameter]
    norms: list[AdaptiveBatchNorm]
    snapshot: list[torch.Tensor]
    optimizer: torch.optim.Optimizer | None = None
    step: int = 0
    seen: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    guards: list[Any] = field(default_factory=list)

    def copy_update(self) -> UpdateCopy:
        """A copy of the updated parameters and the optimizer state, to undo the coming update."""
        optimizer = copy.deepcopy(self.optimizer.state_dict()) if self.optimizer is not None else None
        return [p.detach().clone() for p in self.params], optimizer

    @torch.no_grad()
    def undo_update(self, saved: UpdateCopy) -> None:
        """Put back what :meth:`copy_update` copied, bit for bit; drop the gradients."""
        params, optimizer = saved
        for p, v in zip(self.params, params):
            p.copy_(v)
            p.grad = None
        if optimizer is not None and self.optimizer is not None:
            self.optimizer.load_state_dict(optimizer)

    def state_dict(self) -> dict[str, Any]:
        """The method's part of a checkpoint, on the CPU: parameters, optimizer state, counters and the plain values
        of ``extra`` (tensors, numbers, strings)."""
        return {
            "params": [p.detach().cpu().clone() for p in self.params],
            "optimizer": copy.deepcopy(self.optimizer.state_dict()) if self.optimizer is not None else None,
            "step": int(self.step),
            "seen": int(self.seen),
            "extra": {str(k): v for k, v in self.extra.items() if isinstance(v, _PLAIN)},
        }

    @torch.no_grad()
    def load_state_dict(self, values: dict[str, Any], owner: str = "the adapter") -> None:
        """Restore what :meth:`state_dict` returned.

        Args:
            values: what :meth:`state_dict` returned.
            owner: who updates these parameters, for the error message (e.g. ``"the adapter Tent"``).

        Raises:
            ValueError: if the saved parameters do not match these (another method or network wrote them).
        """
        saved = values["params"]
        shapes = [tuple(p.shape) for p in self.params]
        if [tuple(v.shape) for v in saved] != shapes:
            raise ValueError(
                f"the checkpoint holds {len(saved)} parameters that do not match the {len(shapes)} {owner} updates "
                "on this network; it was written by another method or network: delete it or use another output folder."
            )
        for p, v in zip(self.params, saved):
            p.copy_(v.to(p.device))
        if values["optimizer"] is not None and self.optimizer is not None:
            self.optimizer.load_state_dict(values["optimizer"])
        self.step, self.seen = int(values["step"]), int(values["seen"])
        self.extra.update(values["extra"])
