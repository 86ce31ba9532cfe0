"""The scanner of the MR generator: a site's voxel grid and affine, and its acquisition of the phantom's signal
(partial volume across thick slices, contrast, bias field or endorectal coil, noise, scale and offset).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from monai_tta.data.mr_phantom import PelvisPhantom, phantom_signal, random_waves, rotation_matrix, smooth_field
from monai_tta.data.mr_registry import AXIS_CODES, MRSite, get_mr_site

__all__ = ["grid_shape", "mr_site_affine", "voxel_centres", "acquire_signal"]

_INT16_MAX = np.iinfo(np.int16).max


def _direction(orientation: str, tilt: float) -> np.ndarray:
    """3x3 matrix whose columns are the world (RAS) unit vectors of the voxel axes ``i, j, k``."""
    direction = np.zeros((3, 3))
    for column, code in enumerate(orientation.upper()):
        axis, sign = AXIS_CODES[code]
        direction[axis, column] = sign
    return rotation_matrix(math.radians(tilt), 0.0) @ direction


def grid_shape(spec: MRSite, voxel_scale: float) -> tuple[int, int, int]:
    """The voxels per axis of a site's grid: ``round(fov / (spacing * voxel_scale))``, at least 1.

    Args:
        spec: the site.
        voxel_scale: factor on its spacing.

    Returns:
        ``(ni, nj, nk)``.
    """
    spacing = np.asarray(spec.spacing) * voxel_scale
    return tuple(max(int(round(f / s)), 1) for f, s in zip(spec.fov, spacing))  # type: ignore[return-value]


def mr_site_affine(site: str, centre: Sequence[float] = (0.0, 0.0, 0.0), voxel_scale: float = 1.0) -> np.ndarray:
    """The voxel-to-world (RAS, millimetres) affine of a site's grid whose field of view is centred on ``centre``.

    Args:
        site: a name in :data:`~monai_tta.data.mr_registry.MR_SITES` or ``MR_CONTENT_SITES``.
        centre: world position of the field of view's centre.
        voxel_scale: factor applied to the site's voxel spacing (> 0).

    Returns:
        a float64 ``(4, 4)`` affine, as stored in the NIfTI sform and qform.

    Raises:
        ValueError: for an unknown site or a non-positive ``voxel_scale``.
    """
    spec = get_mr_site(site)
    if not float(voxel_scale) > 0:
        raise ValueError(f"voxel_scale must be > 0, got {voxel_scale}.")
    spacing = np.asarray(spec.spacing, dtype=np.float64) * float(voxel_scale)
    shape = np.asarray(grid_shape(spec, voxel_scale), dtype=np.float64)
    linear = _direction(spec.orientation, spec.tilt) * spacing[None, :]
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = np.asarray(centre, dtype=np.float64) - linear @ ((shape - 1.0) / 2.0)
    return affine


def voxel_centres(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """World (RAS) positions of the voxel centres.

    Args:
        affine: the voxel-to-world matrix.
        shape: the grid.

    Returns:
        ``(N, 3)`` float32, in C order of ``shape``.
    """
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    return (ijk @ affine[:3, :3].T + affine[:3, 3]).astype(np.float32)


def acquire_signal(
    rng: np.random.Generator, spec: MRSite, anatomy: PelvisPhantom, affine: np.ndarray, world: np.ndarray
) -> np.ndarray:
    """Sample the anatomy at the voxel centres and simulate the scanner.

    Args:
        rng: the case's acquisition stream, after the field-of-view shift was drawn from it.
        spec: the site.
        anatomy: the patient.
        affine: the grid's affine (its third column is the slice direction).
        world: the voxel centres, from :func:`voxel_centres`.

    Returns:
        the flat int16 signal.
    """
    jit = spec.jitter
    # thick slices: the signal is the average over the slice profile (partial volume), sampled at n points across k
    ratio = spec.spacing[2] / min(spec.spacing[0], spec.spacing[1])
    n_sub = math.ceil(ratio) + 1  # at least 2 samples per slice thickness; thicker slices get more
    signal = np.zeros(len(world))
    for offset in (np.arange(n_sub) + 0.5) / n_sub - 0.5:
        signal += phantom_signal(anatomy, world + (offset * affine[:3, 2]).astype(np.float32))
    signal /= n_sub
    signal = signal ** (spec.contrast * math.exp(rng.normal(0.0, jit / 2.0)))

    if spec.bias > 0:
        strength = spec.bias * math.exp(rng.normal(0.0, jit))
        signal *= np.exp(strength * smooth_field(world, random_waves(rng, 4, spec.bias_wavelength)))
    if spec.endorectal > 0:
        rx, ry = anatomy.rectum_centre
        distance = np.maximum(np.hypot(world[:, 0] - rx, world[:, 1] - ry) - min(anatomy.rectum_semi) + 4.0, 0.0)
        signal *= 1.0 + spec.endorectal * np.exp(-distance / 15.0)
    if spec.noise > 0:
        sigma = spec.noise * math.exp(rng.normal(0.0, jit))
        real = signal + rng.normal(0.0, sigma, signal.shape)
        if spec.noise_kind == "rician":
            signal = np.hypot(real, rng.normal(0.0, sigma, signal.shape))
        else:
            signal = real
    scale = spec.scale * math.exp(rng.normal(0.0, jit))
    values = np.rint(scale * signal + spec.offset)
    return np.clip(values, -_INT16_MAX, _INT16_MAX).astype(np.int16)
