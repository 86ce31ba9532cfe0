"""Per-case segmentation scores: Dice and ASD as the fundus benchmarks report them (methods spec §1.5), and HD95 for
volumes."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.metrics.utils import get_edge_surface_distance

__all__ = ["dice_per_channel", "asd_per_channel", "hd95_per_channel", "EMPTY_ASD", "EMPTY_HD95"]

#: the value the reference reports for the surface distance when a mask is empty or full.
EMPTY_ASD = 100.0

#: the value :func:`hd95_per_channel` gives when a mask is empty or full (our choice, the ASD convention's value).
EMPTY_HD95 = 100.0


def _binary_pair(
    pred: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both masks as boolean CPU tensors (thresholded at 0.5), checked for equal shapes."""
    p, y = (
        torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().cpu() > 0.5
        for x in (pred, label)
    )
    if p.shape != y.shape:
        raise ValueError(f"prediction {tuple(p.shape)} and label {tuple(y.shape)} differ in shape.")
    return p, y


def _per_channel_surface(
    pred: torch.Tensor | np.ndarray,
    label: torch.Tensor | np.ndarray,
    spacing: float | Sequence[float] | None,
    empty_value: float,
    reduce: Callable[[torch.Tensor, torch.Tensor], float],
) -> list[float]:
    """``reduce(pred-to-label distances, label-to-pred distances)`` of the surface voxels of each channel, or
    ``empty_value`` where either mask is empty or full (no surface to measure from)."""
    p, y = _binary_pair(pred, label)
    out = []
    for pc, yc in zip(p, y):
        n = pc.numel()
        if int(pc.sum()) in (0, n) or int(yc.sum()) in (0, n):
            out.append(empty_value)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            _, (to_label, to_pred), _ = get_edge_surface_distance(
                pc, yc, distance_metric="euclidean", spacing=spacing, symmetric=True, use_subvoxels=False
            )
        out.append(reduce(to_label, to_pred))
    return out


def _symmetric_q95(to_label: torch.Tensor, to_pred: torch.Tensor) -> float:
    return max(float(torch.quantile(d.double(), 0.95)) for d in (to_label, to_pred))


def dice_per_channel(pred: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray) -> list[float]:
    """Dice in percent per channel, ``(2 sum(p y) + 1e-6) / (sum p + sum y + 1e-6) * 100`` on binarised masks.

    An empty prediction of an empty label scores 100, as in the reference.

    Args:
        pred: ``(C, *spatial)`` binary (or probability, thresholded at 0.5) prediction.
        label: ``(C, *spatial)`` binary label.

    Raises:
        ValueError: if the shapes differ.
    """
    p, y = _binary_pair(pred, label)
    p, y = p.flatten(1).double(), y.flatten(1).double()
    dice = (2 * (p * y).sum(1) + 1e-6) / (p.sum(1) + y.sum(1) + 1e-6) * 100
    return [float(v) for v in dice]


def asd_per_channel(pred: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray) -> list[float]:
    """Directional average surface distance (prediction surface to label surface, in pixels) per channel.

    Matches medpy's ``asd(result, reference)``; :data:`EMPTY_ASD` when either mask is empty or full.

    Args:
        pred: ``(C, *spatial)`` binary prediction.
        label: ``(C, *spatial)`` binary label.

    Raises:
        ValueError: if the shapes differ.
    """
    return _per_channel_surface(pred, label, None, EMPTY_ASD, lambda to_label, _: float(to_label.double().mean()))


def hd95_per_channel(
    pred: torch.Tensor | np.ndarray,
    label: torch.Tensor | np.ndarray,
    spacing: float | Sequence[float] | None = None,
) -> list[float]:
    """Symmetric 95th-percentile Hausdorff distance per channel, in the units of ``spacing``.

    ``max(q95(d(pred surface -> label surface)), q95(d(label surface -> pred surface)))`` with linearly interpolated
    quantiles: MONAI's ``compute_hausdorff_distance(..., percentile=95)``. :data:`EMPTY_HD95` when either mask is empty
    or full (where the distance is undefined; the same rule as :func:`asd_per_channel`).

    Args:
        pred: ``(C, *spatial)`` binary prediction.
        label: ``(C, *spatial)`` binary label.
        spacing: voxel size per spatial axis (or one number for all); ``None``: 1 (distances in voxels).

    Raises:
        ValueError: if the shapes differ.
    """
    return _per_channel_surface(pred, label, spacing, EMPTY_HD95, _symmetric_q95)
