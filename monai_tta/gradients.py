"""Gradient operations over a parameter list: compute, flatten, cosine, perturb and restore, freeze the rest."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["param_grads", "flatten", "global_cosine", "perturb", "restore", "set_grads", "only_requires_grad"]


def param_grads(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients of a scalar ``loss`` w.r.t. ``params`` (zeros for a parameter the loss does not reach).

    Uses :func:`torch.autograd.grad`, so no ``.grad`` field is touched and no gradient is computed for other leaves.

    Args:
        loss: scalar loss.
        params: parameters to differentiate against.
    """
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one flat vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def global_cosine(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], eps: float = 1e-12) -> torch.Tensor:
    """One cosine between two gradient lists, each flattened into one vector: ``<a, b> / (|a| |b| + eps)``.

    Args:
        a: first list of tensors.
        b: second list, same shapes.
        eps: added to the product of norms (GraTa uses 1e-12).

    Raises:
        ValueError: if the lists differ in length.
    """
    if len(a) != len(b):
        raise ValueError(f"gradient lists differ in length: {len(a)} vs {len(b)}.")
    flat_a, flat_b = flatten(a), flatten(b)  # 2 concatenations and 3 reductions, not 3 reductions per tensor
    return torch.dot(flat_a, flat_b) / (flat_a.norm() * flat_b.norm() + eps)


@torch.no_grad()
def perturb(
    params: Sequence[torch.Tensor], direction: Sequence[torch.Tensor], scale: float = -1.0
) -> list[torch.Tensor]:
    """Move ``params`` in place by ``scale * direction`` and return copies of the values before the move.

    Args:
        params: parameters to move.
        direction: one tensor per parameter.
        scale: step; GraTa uses ``-1`` (``theta' = theta - grad``).
    """
    backup = [p.detach().clone() for p in params]
    torch._foreach_add_(list(params), list(direction), alpha=scale)
    return backup


@torch.no_grad()
def restore(params: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> None:
    """Copy ``values`` back into ``params`` in place (the objects stay the same, so optimizers keep their state)."""
    torch._foreach_copy_(list(params), list(values))


def set_grads(params: Sequence[nn.Parameter], grads: Sequence[torch.Tensor]) -> None:
    """Write ``grads`` into the ``.grad`` fields of ``params`` (for an optimizer step)."""
    for p, g in zip(params, grads):
        p.grad = g.detach()


@contextmanager
def only_requires_grad(network: nn.Module, params: Sequence[torch.Tensor]) -> Iterator[None]:
    """Within the context, only ``params`` require gradients, so autograd keeps nothing for frozen layers.

    The previous ``requires_grad`` flags are restored on exit.
    """
    flags = [(p, p.requires_grad) for p in network.parameters()]
    keep = {id(p) for p in params}
    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in keep)
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
