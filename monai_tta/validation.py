"""Input validation: every bad case is stopped with a message that names the case, the problem and the fix.

The checks run in two places. The adapters check each batch they are given (:meth:`Adapter.__call__
<monai_tta.adapters.base.Adapter.__call__>`), before anything of their state changes; the bundles check each case as
it is loaded (:class:`ValidateCased`, right after ``EnsureChannelFirstd`` and before any resizing, so that an image far
larger or smaller than expected is seen at its real size), and a case that fails is recorded and skipped
(:class:`~monai_tta.data.guarded.GuardedDataset`).
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from torch import nn
from torch.nn.modules.conv import _ConvNd

from monai_tta.keys import DataKeys

__all__ = [
    "InvalidCaseError",
    "case_name",
    "first_conv",
    "input_conv",
    "check_image",
    "check_label",
    "check_network_input",
    "ValidateCased",
    "RecordShaped",
    "stored_shape_key",
]

#: smallest intensity range (max - min) of an image that is not constant.
MIN_RANGE = 1e-6


class InvalidCaseError(ValueError):
    """A case that cannot be adapted to: the message names the case, what is wrong and how to fix it.

    Args:
        case: name of the case (file name, case id or ``"input"``).
        problem: what is wrong.
        fix: what the user can do about it.

    Attributes:
        case: the case name.
        reason: ``problem`` followed by ``fix`` (what the bundles record in their per-case output).
    """

    def __init__(self, case: str, problem: str, fix: str = "") -> None:
        self.case = str(case)
        self.reason = f"{problem}{'; ' + fix if fix else ''}"
        super().__init__(f"case {self.case!r}: {self.reason}")


def case_name(data: Any, default: str = "input") -> str:
    """A readable name of a case: its ``case_id``, else the image's file name (from a dict or a ``MetaTensor``)."""
    if isinstance(data, Mapping):
        if data.get(DataKeys.CASE_ID) is not None:
            value = data[DataKeys.CASE_ID]
            return str(value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value)
        data = data.get(DataKeys.IMAGE)
    meta = getattr(data, "meta", None)
    if isinstance(meta, Mapping) and meta.get("filename_or_obj"):
        value = meta["filename_or_obj"]
        return str(value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value)
    if isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        return str(data)
    return default


def first_conv(network: nn.Module) -> _ConvNd | None:
    """The first registered convolution of ``network`` (in module order). In most networks it is the stem, which sets
    the input channels and dimensionality; not in all (DiNTS registers its cells before its stem): see
    :func:`input_conv`."""
    return next((m for m in network.modules() if isinstance(m, _ConvNd)), None)


class _ReachedConv(Exception):
    """Raised by the pre-hook of :func:`input_conv` to stop the dry run at the first convolution called."""

    def __init__(self, conv: _ConvNd) -> None:
        super().__init__()
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


def _as_tensor(image: Any, case: str) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image.as_tensor() if hasattr(image, "as_tensor") else image
    if isinstance(image, np.ndarray):
        return torch.from_numpy(image)
    raise InvalidCaseError(case, f"the image is a {type(image).__name__}, not an array", "give a tensor or a file path")


def check_image(
    image: Any,
    case: str = "input",
    in_channels: int | None = None,
    spatial_dims: int | None = None,
    batched: bool = False,
    min_size: int | None = None,
    max_size: int | None = None,
) -> None:
    """Check one image (or batch) and raise :class:`InvalidCaseError` naming the first problem found.

    Checks, in order: an array of numbers; the number of axes (``batched``: ``(B, C, *spatial)``, else ``(C,
    *spatial)``); the channel count; no empty axis; no NaN or Inf; not constant; each spatial size within
    ``[min_size, max_size]``.

    Args:
        image: the image (tensor or array).
        case: the case name used in the message.
        in_channels: expected number of channels (``None``: any).
        spatial_dims: expected number of spatial axes (``None``: at least one).
        batched: whether ``image`` has a batch axis in front.
        min_size: smallest allowed spatial size (``None``: no bound).
        max_size: largest allowed spatial size (``None``: no bound).

    Raises:
        InvalidCaseError: for the first problem found.
    """
    x = _as_tensor(image, case)
    lead = 2 if batched else 1
    layout = "(B, C, *spatial)" if batched else "(C, *spatial)"
    if x.dtype == torch.bool or x.is_complex():
        raise InvalidCaseError(case, f"the image has dtype {x.dtype}", "give real-valued intensities")
    if spatial_dims is not None and x.dim() != spatial_dims + lead:
        raise InvalidCaseError(
            case,
            f"expected a {spatial_dims}D image shaped {layout} ({spatial_dims + lead} axes), "
            f"got shape {tuple(x.shape)}",
            "add the missing batch or channel axis (e.g. x[None]) or give an image of the network's dimensionality",
        )
    if x.dim() < lead + 1:
        raise InvalidCaseError(case, f"expected an image shaped {layout}, got shape {tuple(x.shape)}")
    if in_channels is not None and x.shape[lead - 1] != in_channels:
        raise InvalidCaseError(
            case,
            f"the image has {x.shape[lead - 1]} channels but the network takes {in_channels} "
            f"(shape {tuple(x.shape)}, channel axis {lead - 1})",
            "convert the image (e.g. grey to RGB) or use a network trained on this channel count",
        )
    if x.numel() == 0:
        raise InvalidCaseError(case, f"the image is empty (shape {tuple(x.shape)})")
    if not x.is_floating_point():
        x = x.float()
    # one device-to-host transfer for both checks
    all_finite, value_range = torch.stack([torch.isfinite(x).all().to(x.dtype), x.max() - x.min()]).tolist()
    if not all_finite:
        n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        raise InvalidCaseError(
            case,
            f"the image has {n_nan} NaN and {n_inf} infinite voxels",
            "fix or drop the file (one NaN would turn every adapted parameter into NaN)",
        )
    if value_range <= MIN_RANGE:
        raise InvalidCaseError(
            case,
            f"the image is constant (every voxel is {float(x.flatten()[0]):g})",
            "check the file: it carries no content to adapt to or segment",
        )
    spatial = tuple(int(s) for s in x.shape[lead:])
    if min_size is not None and min(spatial) < min_size:
        raise InvalidCaseError(
            case,
            f"the image is far too small: spatial size {spatial}, expected at least {min_size}",
            "check the file or lower min_size",
        )
    if max_size is not None and max(spatial) > max_size:
        raise InvalidCaseError(
            case,
            f"the image is far too large: spatial size {spatial}, expected at most {max_size}",
            "check the file or raise max_size",
        )


def stored_shape_key(key: str) -> str:
    """The data key under which :class:`RecordShaped` keeps the stored spatial shape of ``key``.

    A prefix, not a suffix: MONAI's ``Spacingd`` treats every key starting with ``"<key>_"`` as a metadata dictionary
    of ``key`` and updates it.
    """
    return f"stored_shape_{key}"


def check_label(label: Any, image: Any, case: str = "input", label_shape: Sequence[int] | None = None) -> None:
    """Check that ``label`` (channel-first) covers its image: same spatial shape, finite values.

    Args:
        label: the label.
        image: its image, as stored (before any resizing).
        case: the case name used in the message.
        label_shape: the label's spatial shape as stored, when it was resized before this check (see
            :class:`RecordShaped`); default: its current shape.

    Raises:
        InvalidCaseError: if the spatial shapes differ or the label has non-finite values.
    """
    y, x = _as_tensor(label, case), _as_tensor(image, case)
    shape = tuple(int(s) for s in label_shape) if label_shape is not None else tuple(y.shape[1:])
    if shape != tuple(x.shape[1:]):
        raise InvalidCaseError(
            case,
            f"the label's spatial shape {shape} does not match the image's {tuple(x.shape[1:])}",
            "pair each image with its own label",
        )
    if y.is_floating_point() and not bool(torch.isfinite(y).all()):
        raise InvalidCaseError(case, "the label has NaN or infinite values", "fix the label file")


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


class ValidateCased(MapTransform):
    """Check a loaded, channel-first case (image and, when present, label) before any resizing.

    Args:
        keys: the image key (one key).
        label_key: the label key (checked when present).
        in_channels: expected number of image channels.
        spatial_dims: expected number of spatial axes.
        min_size: smallest allowed spatial size of the image as stored.
        max_size: largest allowed spatial size of the image as stored.
        allow_missing_keys: do not fail when the label is missing.

    Raises:
        InvalidCaseError: when a case fails a check (see :func:`check_image` and :func:`check_label`).
    """

    def __init__(
        self,
        keys: KeysCollection = DataKeys.IMAGE,
        label_key: str | None = DataKeys.LABEL,
        in_channels: int | None = None,
        spatial_dims: int | None = None,
        min_size: int | None = None,
        max_size: int | None = None,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key
        self.in_channels, self.spatial_dims = in_channels, spatial_dims
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            case = case_name(d)
            check_image(d[key], case, self.in_channels, self.spatial_dims, False, self.min_size, self.max_size)
            label = d.get(self.label_key) if self.label_key is not None else None
            if isinstance(label, (torch.Tensor, np.ndarray)):  # a label still a path is not loaded by this pipeline
                check_label(d[self.label_key], d[key], case, d.get(stored_shape_key(self.label_key)))
        return d


class RecordShaped(MapTransform):
    """Keep the spatial shape of each key's array as loaded (channel-first), under :func:`stored_shape_key`, so that
    :class:`ValidateCased` can compare a label resized before the image is loaded with the image as stored.

    Args:
        keys: the keys to record (e.g. ``"label"``).
        allow_missing_keys: do not fail when a key is missing.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[stored_shape_key(str(key))] = [int(s) for s in d[key].shape[1:]]
        return d
