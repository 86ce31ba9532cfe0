"""Windows and patches of a volume: MONAI's sliding-window grid, and the patches an update is computed on."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.data.utils import dense_patch_slices
from monai.utils import look_up_option

__all__ = ["PATCH_SAMPLING", "STATS_SOURCES", "window_slices", "sample_patches"]

#: how the update's patches are chosen: the non-overlapping grid, or seeded uniformly random positions.
PATCH_SAMPLING = ("grid", "random")
#: where the BatchNorm statistics of a volume come from: the update's patches, or every non-overlapping grid tile.
STATS_SOURCES = ("patches", "tiles")


def window_slices(
    spatial_shape: Sequence[int], roi_size: Sequence[int], overlap: float | Sequence[float] = 0.25
) -> list[tuple[slice, ...]]:
    """The spatial slices of the windows that MONAI's ``SlidingWindowInferer`` visits (same scan interval rule:
    ``int(roi * (1 - overlap))``, at least 1, or the whole axis when the roi covers it; the last window of an axis is
    shifted to end at the border).

    Args:
        spatial_shape: spatial size of the (padded) volume, at least ``roi_size`` along every axis.
        roi_size: window size.
        overlap: overlap ratio, one value or one per axis.
    """
    dims = len(spatial_shape)
    overlaps = [float(overlap)] * dims if isinstance(overlap, (int, float)) else [float(o) for o in overlap]
    interval = []
    for n, r, o in zip(spatial_shape, roi_size, overlaps):
        interval.append(int(r) if r == n else max(int(r * (1 - o)), 1))
    return list(dense_patch_slices(tuple(spatial_shape), tuple(roi_size), tuple(interval)))


def sample_patches(
    spatial_shape: Sequence[int],
    roi_size: Sequence[int],
    num_patches: int | None = None,
    sampling: str = "grid",
    generator: torch.Generator | None = None,
) -> list[tuple[slice, ...]]:
    """The patches (spatial slices of size ``roi_size``) a volume's update is computed on.

    - ``"grid"``: the tiles of the non-overlapping grid (the last tile of an axis shifted to end at the border); with
      ``num_patches`` smaller than their number, ``num_patches`` tiles evenly spaced in the grid's order
      (deterministic);
    - ``"random"``: ``num_patches`` positions drawn uniformly from ``generator`` (every voxel can be covered).

    Args:
        spatial_shape: spatial size of the (padded) volume, at least ``roi_size`` along every axis.
        roi_size: patch size.
        num_patches: number of patches; ``None`` is every grid tile (``"grid"`` only).
        sampling: ``"grid"`` or ``"random"``.
        generator: random generator of ``"random"``.

    Raises:
        ValueError: for an unknown sampling, ``num_patches < 1``, or ``None`` with ``"random"``.
    """
    sampling = look_up_option(sampling, PATCH_SAMPLING)
    if num_patches is not None and num_patches < 1:
        raise ValueError(f"num_patches must be None or >= 1, got {num_patches}.")
    if sampling == "random":
        if num_patches is None:
            raise ValueError("patch_sampling='random' needs num_patches.")
        starts = [
            torch.randint(0, n - r + 1, (num_patches,), generator=generator).tolist()
            for n, r in zip(spatial_shape, roi_size)
        ]
        return [tuple(slice(s[i], s[i] + r) for s, r in zip(starts, roi_size)) for i in range(num_patches)]
    tiles = window_slices(spatial_shape, roi_size, overlap=0.0)
    if num_patches is None or num_patches >= len(tiles):
        return tiles
    index = torch.linspace(0, len(tiles) - 1, num_patches).round().long().tolist()
    return [tiles[i] for i in index]
