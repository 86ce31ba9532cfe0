"""The optimizers of the adapters."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.utils import look_up_option
from torch import nn

__all__ = ["OPTIMIZERS", "build_optimizer", "set_lr"]

#: the optimizer names an adapter takes.
OPTIMIZERS = ("adam", "sgd")


def build_optimizer(
    params: Sequence[nn.Parameter],
    name: str = "adam",
    lr: float = 1e-4,
    betas: Sequence[float] = (0.9, 0.999),
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    """Build the optimizer of an adapter.

    Args:
        params: parameters to optimise.
        name: ``"adam"`` or ``"sgd"``.
        lr: base learning rate.
        betas: Adam's betas.
        momentum: SGD momentum.
        weight_decay: weight decay.
        nesterov: SGD Nesterov momentum.

    Raises:
        ValueError: for an unknown optimizer name.
    """
    name = look_up_option(name.lower(), OPTIMIZERS)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group (a Python float: no device synchronisation later)."""
    for group in optimizer.param_groups:
        group["lr"] = float(lr)
