"""What a network takes as input, and the check of a batch given to an adapter against it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from monai_tta.data.checks import InvalidCaseError, case_name, check_image

__all__ = ["first_conv", "check_network_input"]


def first_conv(network: nn.Module) -> _ConvNd | None:
    """The first convolution of ``network`` (in module order), which sets its input channels and dimensionality."""
    return next((m for m in network.modules() if isinstance(m, _ConvNd)), None)


def check_network_input(inputs: Any, network: nn.Module, case: str | None = None) -> None:
    """Check a batch given to an adapter against what ``network`` takes (its first convolution's channels and
    dimensionality).

    Raises:
        InvalidCaseError: for the first problem found (see :func:`check_image`).
    """
    conv = first_conv(network)
    name = case if case is not None else case_name(inputs)
    if isinstance(inputs, torch.Tensor) and not inputs.is_floating_point():
        raise InvalidCaseError(name, f"inputs have dtype {inputs.dtype}", "convert them to a floating-point tensor")
    check_image(
        inputs,
        name,
        in_channels=None if conv is None else int(conv.in_channels),
        spatial_dims=None if conv is None else len(conv.kernel_size),
        batched=True,
    )
