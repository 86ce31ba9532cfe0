"""2D slices of preprocessed volumes, for 2D networks trained and adapted on 3D data (e.g. TGMA on the MR sites).

Volumes are preprocessed by the caller's MONAI pipeline (loading, orientation, spacing, in-plane size, intensity), then
cut into slices along one spatial axis with MONAI's ``PatchIterd`` (patches one voxel thick) and ``SqueezeDimd``. Each
slice keeps the volume's keys (``case_id``, ``domain``) and records its index, so that per-case results can pool the
slices of a volume again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from monai.data import PatchIterd
from monai.transforms import SqueezeDimd

from monai_tta.data.keys import DataKeys

__all__ = ["SLICE_KEY", "volume_slices"]

#: key of a slice's index along the sliced axis.
SLICE_KEY = "slice"
_PATCH_KEYS = ("patch_coords", "original_spatial_shape", "start_pos")


def volume_slices(
    volumes: Iterable[Mapping[str, Any]],
    keys: Sequence[str] = (DataKeys.IMAGE.value, DataKeys.LABEL.value),
    axis: int = -1,
) -> list[dict[str, Any]]:
    """All slices of the volumes, in order (volume by volume, then along ``axis``).

    Args:
        volumes: preprocessed data dictionaries with channel-first 3D arrays ``(C, X, Y, Z)`` under ``keys`` (e.g. a
            MONAI ``Dataset`` with the 3D preprocessing as its transform); keys that are missing are skipped.
        keys: the array keys to slice.
        axis: spatial axis to slice along (0, 1, 2 or -1 for the last, the axial axis after ``Orientationd("RAS")``).

    Returns:
        one dict per slice: the 2D arrays ``(C, ., .)``, the other keys of its volume and ``"slice"`` (its index).

    Raises:
        ValueError: if ``axis`` is not a spatial axis of a 3D volume.
    """
    if axis not in (-3, -2, -1, 0, 1, 2):
        raise ValueError(f"axis must be a spatial axis of a 3D volume (0, 1, 2 or negative), got {axis}.")
    spatial_axis = axis % 3
    out = []
    for volume in volumes:
        present = [k for k in keys if k in volume and volume[k] is not None]
        patch_size = [None, None, None]
        patch_size[spatial_axis] = 1
        squeeze = SqueezeDimd(present, dim=spatial_axis + 1)
        for index, (patch, _) in enumerate(PatchIterd(present, patch_size=patch_size, mode=None)(dict(volume))):
            item = squeeze({k: v for k, v in patch.items() if k not in _PATCH_KEYS})
            item[SLICE_KEY] = index
            out.append(item)
    return out
