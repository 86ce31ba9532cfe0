"""What a network takes as input, and the check of a batch given to an adapter against it."""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from monai_tta.data.checks import InvalidCaseError, case_name, check_image

__all__ = ["first_conv", "input_conv", "check_network_input"]


def first_conv(network: nn.Module) -> _ConvNd | None:
    """The first registered convolution of ``network`` (in module order). In most networks it is the stem, which sets
    the input channels and dimensionality; not in all (DiNTS registers its cells before its stem): see
    :func:`input_conv`."""
    return next((m for m in network.modules() if isinstance(m, _ConvNd)), None)


class _ReachedConv(Exception):
    """Raised by the pre-hook of :func:`input_conv` to stop the dry run at the first convolution called."""

    def __init__(self, conv: _ConvNd) -> None:
        super().__init__(conv)  # all arguments (flake8-bugbear B042, the zoo's check)
        self.conv = conv


#: per network, the convolution found by :func:`input_conv` (``None``: none found).
_INPUT_CONVS: weakref.WeakKeyDictionary[nn.Module, _ConvNd | None] = weakref.WeakKeyDictionary()


def input_conv(network: nn.Module, inputs: torch.Tensor) -> _ConvNd | None:
    """The convolution that receives the input of ``network``: the first one *called* in a forward of ``inputs``.

    Found once per network (then cached) by a dry run under ``no_grad`` that stops at the forward pre-hook of the first
    convolution called, before that convolution computes anything (so an input with the wrong channel count is
    found, not crashed on; nothing after the stem runs). ``None`` when the forward calls no convolution module or
    fails before reaching one (the network's own error then speaks on the real forward).

    Args:
        network: the network.
        inputs: a batch ``(B, C, *spatial)`` of the kind the network is given.
    """
    if network in _INPUT_CONVS:
        return _INPUT_CONVS[network]
    convs = [m for m in network.modules() if isinstance(m, _ConvNd)]

    def stop(module: nn.Module, args: Any) -> None:
        raise _ReachedConv(module)

    handles = [m.register_forward_pre_hook(stop) for m in convs]
    found = None
    try:
        with torch.no_grad():
            network(inputs)
    except _ReachedConv as reached:
        found = reached.conv
    except Exception:  # noqa: BLE001 - a network that fails before its first convolution is not ours to judge here
        found = None
    finally:
        for handle in handles:
            handle.remove()
    _INPUT_CONVS[network] = found
    return found


def _takes(conv: _ConvNd, x: torch.Tensor) -> bool:
    return x.dim() == len(conv.kernel_size) + 2 and x.shape[1] == conv.in_channels


def check_network_input(inputs: Any, network: nn.Module, case: str | None = None) -> None:
    """Check a batch given to an adapter against what ``network`` takes: the channels and dimensionality of the
    convolution that receives the input.

    That is the first registered convolution when the input fits it (the usual stem-first network: no extra cost);
    otherwise the first convolution *called* on the input (:func:`input_conv`, a dry run stopped at that convolution,
    once per network), so a network whose first registered convolution is not its stem (DiNTS) is not rejected.

    Raises:
        InvalidCaseError: for the first problem found (see :func:`check_image`).
    """
    conv = first_conv(network)
    name = case if case is not None else case_name(inputs)
    if isinstance(inputs, torch.Tensor) and not inputs.is_floating_point():
        raise InvalidCaseError(name, f"inputs have dtype {inputs.dtype}", "convert them to a floating-point tensor")
    if conv is not None and isinstance(inputs, torch.Tensor) and not _takes(conv, inputs):
        x = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
        conv = input_conv(network, x) if x.dim() >= 3 else conv
    check_image(
        inputs,
        name,
        in_channels=None if conv is None else int(conv.in_channels),
        spatial_dims=None if conv is None else len(conv.kernel_size),
        batched=True,
    )
