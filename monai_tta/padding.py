"""Inputs of any spatial size: the size multiple a network needs, and padding to it (cropped back afterwards).

A UNet-like network that downsamples ``k`` times by 2 needs spatial sizes divisible by ``2**k`` (its skip connections
are concatenated). :func:`network_divisor` reads that multiple from the network, :func:`pad_to_multiple` pads an input
symmetrically (as MONAI's ``DivisiblePad(method="symmetric")``) and returns the slices that crop the output back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.utils import ensure_tuple_rep
from torch import nn

__all__ = ["network_divisor", "pad_to_size", "pad_to_multiple"]


def _prod_strides(strides: Sequence, spatial_dims: int) -> tuple[int, ...]:
    total = [1] * spatial_dims
    for stride in strides:
        for i, s in enumerate(ensure_tuple_rep(stride, spatial_dims)):
            total[i] *= int(s)
    return tuple(total)


def network_divisor(network: nn.Module, spatial_dims: int) -> tuple[int, ...]:
    """The multiple each spatial size of an input of ``network`` must be, per axis (1 when nothing is needed).

    Read, in this order, from: a ``size_divisor`` attribute (this package's networks; int or per-axis sequence);
    MONAI's ``UNet`` and ``DynUNet`` (the product of their ``strides``); ``SegResNet``
    (``2 ** (len(blocks_down) - 1)``); ``SwinUNETR`` (``patch_size ** 5``). Other networks give 1 (``BasicUNet``
    pads its own skips). ``UNETR`` needs its exact ``img_size``, which padding cannot give in general: run it
    through the sliding window.

    Args:
        network: the network.
        spatial_dims: number of spatial axes of the input.
    """
    divisor = getattr(network, "size_divisor", None)
    if divisor is not None:
        return tuple(int(d) for d in ensure_tuple_rep(divisor, spatial_dims))
    name = type(network).__name__
    if name in ("UNet", "DynUNet") and hasattr(network, "strides"):
        return _prod_strides(network.strides, spatial_dims)
    if name == "SegResNet" and hasattr(network, "blocks_down"):
        return (2 ** (len(network.blocks_down) - 1),) * spatial_dims
    if name == "SwinUNETR" and hasattr(network, "patch_size"):
        return (int(network.patch_size) ** 5,) * spatial_dims
    return (1,) * spatial_dims


def pad_to_size(
    x: torch.Tensor, size: Sequence[int], mode: str = "replicate", value: float = 0.0
) -> tuple[torch.Tensor, tuple[slice, ...] | None]:
    """Pad the spatial axes of ``x`` ``(B, C, *spatial)`` symmetrically (the odd voxel after) up to ``size``, as
    MONAI's sliding window and ``DivisiblePad(method="symmetric")`` do; axes already at least that long are kept.

    Args:
        x: the input.
        size: target size per spatial axis.
        mode: padding mode of :func:`torch.nn.functional.pad` (``"replicate"``, ``"reflect"``, ``"constant"``, ...).
        value: fill value of ``"constant"``.

    Returns:
        the padded input (``x`` itself when nothing is needed) and the slices that crop an output of the padded
        input back to ``x``'s spatial size (``None`` when nothing was padded).
    """
    spatial = x.shape[2:]
    totals = [max(int(t) - n, 0) for n, t in zip(spatial, size)]
    if not any(totals):
        return x, None
    pad: list[int] = []
    for total in reversed(totals):  # F.pad lists the last axis first
        pad.extend([total // 2, total - total // 2])
    crop = (slice(None), slice(None)) + tuple(slice(t // 2, t // 2 + n) for t, n in zip(totals, spatial))
    return F.pad(x, pad, mode=mode, value=value if mode == "constant" else None), crop


def pad_to_multiple(
    x: torch.Tensor, divisor: Sequence[int], mode: str = "replicate"
) -> tuple[torch.Tensor, tuple[slice, ...] | None]:
    """Pad the spatial axes of ``x`` symmetrically up to multiples of ``divisor`` (see :func:`pad_to_size`)."""
    return pad_to_size(x, [math.ceil(n / d) * d for n, d in zip(x.shape[2:], divisor)], mode)
