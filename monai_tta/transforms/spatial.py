"""The flip/rotation views of GraTa's pseudo-label, with their exact inverses, for images and volumes."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["FLIP_ROT_VIEWS", "VIEW_DIMS", "apply_view", "invert_view", "views_preserve_shape"]

#: The six views of GraTa's soft pseudo-label: identity, hflip, vflip, rot90 (flip the second axis then transpose),
#: rot180, rot270 (transpose then flip the second axis), in the plane of two axes (``dims``).
FLIP_ROT_VIEWS = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270")

#: The plane of the views in a ``(B, C, *spatial)`` batch: the first two spatial axes. For an image ``(B, C, H, W)``
#: that is ``(H, W)``, GraTa's plane; for a volume ``(B, C, H, W, D)`` in MONAI's layout (e.g. RAS after
#: ``Orientationd``) it is the axial plane, so the views never mix the through-plane axis, which is often the
#: thick-slice axis of MR and CT (our choice for 3D).
VIEW_DIMS = (2, 3)


def _check(view: str) -> None:
    if view not in FLIP_ROT_VIEWS:
        raise ValueError(f"unknown view '{view}', expected one of {FLIP_ROT_VIEWS}.")


def apply_view(x: torch.Tensor, view: str, dims: Sequence[int] = (-2, -1)) -> torch.Tensor:
    """Apply one view in the plane of axes ``dims = (a, b)`` of ``x`` (default the last two).

    Raises:
        ValueError: for an unknown view name.
    """
    _check(view)
    a, b = dims
    if view == "identity":
        return x
    if view == "hflip":
        return x.flip(b)
    if view == "vflip":
        return x.flip(a)
    if view == "rot90":
        return x.flip(b).transpose(a, b)
    if view == "rot180":
        return x.flip(b).flip(a)
    return x.transpose(a, b).flip(b)


def invert_view(y: torch.Tensor, view: str, dims: Sequence[int] = (-2, -1)) -> torch.Tensor:
    """Undo :func:`apply_view` in the plane of axes ``dims`` of ``y``.

    Raises:
        ValueError: for an unknown view name.
    """
    _check(view)
    a, b = dims
    if view == "rot90":
        return y.transpose(a, b).flip(b)
    if view == "rot270":
        return y.flip(b).transpose(a, b)
    return apply_view(y, view, dims)


def views_preserve_shape(x: torch.Tensor, dims: Sequence[int] = (-2, -1)) -> bool:
    """Whether every view keeps the shape of ``x`` (the two axes ``dims`` have the same size), so views can be
    batched."""
    return x.shape[dims[0]] == x.shape[dims[1]]
