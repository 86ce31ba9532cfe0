"""The flip/rotation views of GraTa's pseudo-label, with their exact inverses."""

from __future__ import annotations

import torch

__all__ = ["FLIP_ROT_VIEWS", "apply_view", "invert_view", "views_preserve_shape"]

#: The six views of GraTa's soft pseudo-label: identity, hflip, vflip, rot90 (flip W then transpose), rot180,
#: rot270 (transpose then flip W). The last two spatial axes are ``(H, W)``.
FLIP_ROT_VIEWS = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270")


def _check(view: str) -> None:
    if view not in FLIP_ROT_VIEWS:
        raise ValueError(f"unknown view '{view}', expected one of {FLIP_ROT_VIEWS}.")


def apply_view(x: torch.Tensor, view: str) -> torch.Tensor:
    """Apply one view to the last two axes of ``x``.

    Raises:
        ValueError: for an unknown view name.
    """
    _check(view)
    if view == "identity":
        return x
    if view == "hflip":
        return x.flip(-1)
    if view == "vflip":
        return x.flip(-2)
    if view == "rot90":
        return x.flip(-1).transpose(-2, -1)
    if view == "rot180":
        return x.flip(-1).flip(-2)
    return x.transpose(-2, -1).flip(-1)


def invert_view(y: torch.Tensor, view: str) -> torch.Tensor:
    """Undo :func:`apply_view` on the last two axes of ``y``.

    Raises:
        ValueError: for an unknown view name.
    """
    _check(view)
    if view == "rot90":
        return y.transpose(-2, -1).flip(-1)
    if view == "rot270":
        return y.flip(-1).transpose(-2, -1)
    return apply_view(y, view)


def views_preserve_shape(x: torch.Tensor) -> bool:
    """Whether every view keeps the shape of ``x`` (true for square ``H == W``), so views can be batched."""
    return x.shape[-1] == x.shape[-2]
