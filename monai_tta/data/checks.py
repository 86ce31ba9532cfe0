"""Case checks: every bad case is stopped with a message that names the case, the problem and the fix.

The checks run in two places. The adapters check each batch they are given (:meth:`Adapter.__call__
<monai_tta.adapters.base.Adapter.__call__>`, with :func:`~monai_tta.networks.inputs.check_network_input`), before
anything of their state changes; the bundles check each case as it is loaded
(:class:`~monai_tta.transforms.validation.ValidateCased`, right after ``EnsureChannelFirstd`` and before any
resizing, so that an image far larger or smaller than expected is seen at its real size), and a case that fails is
recorded and skipped (:class:`~monai_tta.data.guarded.GuardedDataset`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from monai_tta.data.keys import DataKeys

__all__ = ["InvalidCaseError", "case_name", "check_image", "check_label", "MIN_RANGE"]

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
        super().__init__(case, problem, fix)  # all arguments: the error pickles and copies (flake8-bugbear B042)
        self.case = str(case)
        self.reason = f"{problem}{'; ' + fix if fix else ''}"

    def __str__(self) -> str:
        return f"case {self.case!r}: {self.reason}"


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


def check_label(label: Any, image: Any, case: str = "input", label_shape: Sequence[int] | None = None) -> None:
    """Check that ``label`` (channel-first) covers its image: same spatial shape, finite values.

    Args:
        label: the label.
        image: its image, as stored (before any resizing).
        case: the case name used in the message.
        label_shape: the label's spatial shape as stored, when it was resized before this check (see
            :class:`~monai_tta.transforms.validation.RecordShaped`); default: its current shape.

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
