"""Embedded multi-site generator of prostate-like 3D MR volumes (NIfTI), for 3D adaptation and multi-source TGMA.

Every case is a pelvis-like body (skin, subcutaneous fat, a muscle ring, pelvic fat, two pelvic bones with obturator
muscles, a bladder and a rectum) with a prostate-like gland of two zones: a bright peripheral zone wrapping a darker,
more heterogeneous transition zone, inside a thin dark capsule (T2-weighted look). The anatomy is defined in world
coordinates (millimetres, RAS+) and is drawn from one distribution at every site: size, shape, pose and position of
every structure vary per case, never per site.

A *site* is a simulated scanner and protocol. It samples that anatomy on its own voxel grid and writes what a real
scanner would: its voxel spacing and slice thickness (with partial-volume averaging across thick slices), its storage
orientation (RAS, LPS, LAS, a sagittal acquisition with permuted axes, an oblique tilt), its field of view, a smooth
multiplicative bias field (or the steep fall-off of an endorectal coil), its tissue contrast, its noise (Rician
magnitude noise or Gaussian) and its intensity scale and offset. The registry :data:`MR_SITES` documents each site;
the parameters are plausible acquisition differences chosen by hand, none was tuned to favour an adaptation method.
``docs/data/mr_sites.md`` says what each site changes and why it is realistic.

Labels follow the Medical Segmentation Decathlon prostate task: ``0`` background, ``1`` peripheral zone, ``2``
transition zone; ``labels="gland"`` writes the whole gland as ``1``.

Example::

    from monai_tta.data import generate_mr_sites, load_datalist

    datalist_file = generate_mr_sites("./data/mr_sites", num_train=8, num_test=4)
    sections = load_datalist(datalist_file)  # {"source_train": [...], "source_val": [...], "source_test": [...], ...}
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.utils import look_up_option

from monai_tta.data.synthetic import DATALIST_NAME, MANIFEST_NAME, SOURCE_DOMAIN
from monai_tta.io import atomic_write_bytes, atomic_write_json
from monai_tta.keys import DataKeys

__all__ = [
    "MRSite",
    "MR_SITES",
    "MR_LABEL_MODES",
    "MR_SPLITS",
    "MR_GENERATOR_VERSION",
    "list_mr_sites",
    "mr_site_affine",
    "synthesize_mr_case",
    "generate_mr_sites",
]

MR_GENERATOR_VERSION = 1
"""Bumped whenever the rendering changes, so cached folders are regenerated."""

MR_LABEL_MODES = ("zones", "gland")
"""``zones``: 1 peripheral zone, 2 transition zone (Decathlon prostate); ``gland``: 1 whole gland."""

MR_SPLITS = ("train", "test")
"""Case splits. Every site has both: a per-site source model is trained on ``train`` and evaluated on ``test``."""

_PERIPHERAL, _TRANSITION = 1, 2
_AXES = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
_INT16_MAX = np.iinfo(np.int16).max


@dataclass(frozen=True)
class MRSite:
    """Acquisition parameters of one simulated MR site (scanner and protocol).

    Lengths are millimetres. ``spacing`` and ``fov`` are given in the stored voxel order ``(i, j, k)``; ``k`` is the
    slice axis. Every case draws its own small variation of the intensity parameters (``jitter``) and its own
    field-of-view placement (``fov_shift``).

    Args:
        description: one line saying what real acquisition the site imitates.
        orientation: the stored axis codes, nibabel style (``"RAS"``: ``i`` runs to the right, ``j`` to anterior,
            ``k`` to superior; ``"LPS"`` is the DICOM/ITK order; a permutation such as ``"ASL"`` is a sagittal stack).
        spacing: voxel size ``(i, j, k)``; ``k`` is the slice thickness (contiguous slices, no gap).
        fov: extent of the field of view along ``(i, j, k)``; the grid has ``round(fov / spacing)`` voxels per axis.
        tilt: oblique acquisition, degrees of rotation of the voxel grid about the left-right world axis.
        scale: intensity units per unit of tissue signal (scanners store arbitrary units).
        offset: intensity added after scaling (an export's intercept).
        contrast: exponent of the tissue signal (below 1 flattens the T2 contrast, above 1 steepens it).
        bias: standard deviation of the log of a smooth multiplicative bias field (receive-coil inhomogeneity).
        bias_wavelength: spatial wavelength of that field.
        endorectal: gain of an endorectal receive coil: signal times ``1 + endorectal * exp(-d / 15 mm)``, ``d`` the
            distance to the rectal lumen.
        noise: noise standard deviation, relative to the tissue signal range [0, 1].
        noise_kind: ``"rician"`` (magnitude image of complex Gaussian noise: a positive, Rayleigh-distributed floor in
            air) or ``"gaussian"`` (additive).
        fov_shift: largest offset of the field of view's centre from the gland centre, per world axis.
        jitter: relative per-case variation of ``scale``, ``bias`` and ``noise``.
    """

    description: str
    orientation: str = "RAS"
    spacing: tuple[float, float, float] = (2.0, 2.0, 3.0)
    fov: tuple[float, float, float] = (120.0, 120.0, 72.0)
    tilt: float = 0.0
    scale: float = 1000.0
    offset: float = 0.0
    contrast: float = 1.0
    bias: float = 0.1
    bias_wavelength: float = 200.0
    endorectal: float = 0.0
    noise: float = 0.02
    noise_kind: str = "rician"
    fov_shift: float = 5.0
    jitter: float = 0.05


MR_SITES: dict[str, MRSite] = {
    SOURCE_DOMAIN: MRSite(
        description="3T, pelvic phased-array coil, axial T2 stored RAS; 2.0 mm in-plane, 3.0 mm slices, "
        "120 mm field of view, mild bias, Rician noise 2%",
    ),
    "thick": MRSite(
        description="1.5T, axial, stored LPS (DICOM order); thick 4.5 mm slices, coarser 2.4 mm in-plane, wider "
        "150 mm field of view showing the body outline, lower SNR (Rician 5%), flatter contrast, scale 400",
        orientation="LPS",
        spacing=(2.4, 2.4, 4.5),
        fov=(150.0, 150.0, 81.0),
        scale=400.0,
        contrast=0.8,
        noise=0.05,
    ),
    "endorectal": MRSite(
        description="3T with an endorectal coil: bright signal at the rectum falling off anteriorly; stored LAS; "
        "fine 1.6 mm in-plane, 3.6 mm slices, small 100 mm field of view, scale 3000",
        orientation="LAS",
        spacing=(1.6, 1.6, 3.6),
        fov=(100.0, 100.0, 72.0),
        scale=3000.0,
        endorectal=2.0,
        noise=0.015,
    ),
    "sagittal": MRSite(
        description="sagittal T2 stack stored with permuted axes (ASL: i anterior, j superior, k left); 1.8 mm "
        "in-plane (A-P, S-I), 4.0 mm slices across left-right, steeper contrast",
        orientation="ASL",
        spacing=(1.8, 1.8, 4.0),
        fov=(120.0, 108.0, 100.0),
        contrast=1.25,
        bias=0.15,
    ),
    "oblique": MRSite(
        description="oblique axial tilted 12 degrees about left-right (perpendicular to the rectal wall), stored LPS; "
        "Gaussian noise 3% and an export intercept of +200, scale 800",
        orientation="LPS",
        spacing=(2.0, 2.0, 3.0),
        fov=(120.0, 120.0, 75.0),
        tilt=12.0,
        scale=800.0,
        offset=200.0,
        noise=0.03,
        noise_kind="gaussian",
    ),
    "bias": MRSite(
        description="older 1.5T body-coil protocol with strong intensity inhomogeneity (bias 0.35); narrow 90 mm field "
        "of view cutting the body; thinner 2.5 mm slices at 1.8 mm in-plane; stored RAS, scale 1500",
        spacing=(1.8, 1.8, 2.5),
        fov=(90.0, 90.0, 66.0),
        scale=1500.0,
        bias=0.35,
        bias_wavelength=150.0,
        noise=0.03,
    ),
}
"""Registry of the simulated sites, name -> parameters; the source site first. Add an entry to define a new site."""


def list_mr_sites() -> list[str]:
    """Names of the registered MR sites, the source site first.

    Returns:
        the keys of :data:`MR_SITES` in registry order.
    """
    return list(MR_SITES)


def _get_site(site: str) -> MRSite:
    if site not in MR_SITES:
        raise ValueError(f"unknown MR site {site!r}; available: {list_mr_sites()}.")
    spec = MR_SITES[site]
    codes = spec.orientation.upper()
    if len(codes) != 3 or sorted(_AXES[c][0] for c in codes if c in _AXES) != [0, 1, 2]:
        raise ValueError(f"MR site {site!r}: orientation {spec.orientation!r} must name each of L/R, A/P, S/I once.")
    look_up_option(spec.noise_kind, ("rician", "gaussian"))
    return spec


def _case_rngs(seed: int, site: str, split: str, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Two independent streams of one case: its anatomy and its acquisition."""
    # crc32 of names (not registry positions) keeps a site's cases stable when sites are added
    sequence = np.random.SeedSequence([int(seed), zlib.crc32(site.encode()), zlib.crc32(split.encode()), int(index)])
    anatomy, acquisition = sequence.spawn(2)
    return np.random.default_rng(anatomy), np.random.default_rng(acquisition)


# ---------------------------------------------------------------------------------------------------------------------
# anatomy, in world millimetres (RAS+: x to the right, y anterior, z superior), gland centre near the origin


def _rotation(angle_x: float, angle_z: float) -> np.ndarray:
    cx, sx, cz, sz = math.cos(angle_x), math.sin(angle_x), math.cos(angle_z), math.sin(angle_z)
    rot_x = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    rot_z = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    return rot_z @ rot_x


def _waves(rng: np.random.Generator, n: int, wavelength: float) -> tuple[np.ndarray, np.ndarray]:
    """Random plane waves: wave vectors ``(n, 3)`` of about ``wavelength`` and phases ``(n,)``."""
    directions = rng.normal(size=(n, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    k = directions * (2.0 * math.pi / wavelength) * rng.uniform(0.6, 1.4, size=(n, 1))
    return k, rng.uniform(0.0, 2.0 * math.pi, size=n)


def _field(points: np.ndarray, waves: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Smooth field of unit standard deviation (over phases) at ``points`` ``(N, 3)``: a sum of cosines."""
    k, phase = waves
    return np.cos(points @ k.T + phase).sum(axis=1) * math.sqrt(2.0 / len(phase))


def _level(points: np.ndarray, centre, semi, rotation: np.ndarray | None = None) -> np.ndarray:
    """Ellipsoid level set: < 1 inside, 1 on the boundary (``rotation`` maps body axes to world axes)."""
    local = points - np.asarray(centre, dtype=np.float64)
    if rotation is not None:
        local = local @ rotation
    return np.sqrt(((local / np.asarray(semi, dtype=np.float64)) ** 2).sum(axis=1))


def _cylinder_level(points: np.ndarray, centre_xy, semi_xy) -> np.ndarray:
    """Elliptic cylinder along z: < 1 inside."""
    dx = (points[:, 0] - centre_xy[0]) / semi_xy[0]
    dy = (points[:, 1] - centre_xy[1]) / semi_xy[1]
    return np.sqrt(dx * dx + dy * dy)


@dataclass(frozen=True)
class _Anatomy:
    """One patient: the parameters of every structure (drawn by :func:`_draw_anatomy`)."""

    body_centre: tuple[float, float]
    body_semi: tuple[float, float]
    fat: float
    muscle: float
    bone_x: float
    bone_semi: tuple[float, float]
    obturator_x: float
    bladder_centre: tuple[float, float, float]
    bladder_semi: tuple[float, float, float]
    rectum_centre: tuple[float, float]
    rectum_semi: tuple[float, float]
    gland_centre: tuple[float, float, float]
    gland_semi: tuple[float, float, float]
    gland_rotation: tuple[float, float]
    tz_centre: tuple[float, float, float]
    tz_semi: tuple[float, float, float]
    shape_waves: tuple[np.ndarray, np.ndarray]
    shape_amplitude: float
    texture_waves: tuple[np.ndarray, np.ndarray]
    nodule_waves: tuple[np.ndarray, np.ndarray]
    tissue: dict[str, float]


def _draw_anatomy(rng: np.random.Generator) -> _Anatomy:
    u = rng.uniform
    gland_semi = (u(19.0, 25.0), u(13.0, 17.0), u(15.0, 20.0))
    gland_centre = (u(-4.0, 4.0), u(-4.0, 4.0), u(-4.0, 4.0))
    ratio = u(0.55, 0.8)  # transition zone size relative to the gland (grows with age)
    tz_semi = (gland_semi[0] * ratio, gland_semi[1] * ratio * u(0.9, 1.1), gland_semi[2] * ratio * u(0.9, 1.1))
    tz_centre = (
        gland_centre[0] + u(-1.5, 1.5),
        gland_centre[1] + u(0.15, 0.3) * gland_semi[1],  # anterior: the peripheral zone is thickest posteriorly
        gland_centre[2] + u(0.0, 0.15) * gland_semi[2],
    )
    rectum_semi = (u(14.0, 18.0), u(10.0, 14.0))
    rectum_centre = (u(-3.0, 3.0), gland_centre[1] - gland_semi[1] - rectum_semi[1] - u(1.0, 4.0))
    bladder_semi = (u(25.0, 35.0), u(18.0, 25.0), u(18.0, 25.0))
    bladder_centre = (u(-4.0, 4.0), gland_centre[1] + u(6.0, 14.0), gland_centre[2] + gland_semi[2] + u(12.0, 18.0))
    tissue = {
        "skin": u(0.4, 0.5),
        "fat": u(0.75, 0.85),
        "muscle": u(0.22, 0.3),
        "pelvic_fat": u(0.65, 0.75),
        "cortex": u(0.03, 0.08),
        "marrow": u(0.45, 0.55),
        "urine": u(0.9, 1.0),
        "wall": u(0.25, 0.35),
        "lumen": u(0.08, 0.15),
        "capsule": u(0.18, 0.26),
        "peripheral": u(0.62, 0.72),
        "transition": u(0.33, 0.43),
    }
    return _Anatomy(
        body_centre=(u(-3.0, 3.0), u(15.0, 25.0)),
        body_semi=(u(88.0, 100.0), u(62.0, 72.0)),
        fat=u(8.0, 16.0),
        muscle=u(10.0, 18.0),
        bone_x=u(58.0, 66.0),
        bone_semi=(u(10.0, 14.0), u(18.0, 24.0)),
        obturator_x=u(38.0, 44.0),
        bladder_centre=bladder_centre,
        bladder_semi=bladder_semi,
        rectum_centre=rectum_centre,
        rectum_semi=rectum_semi,
        gland_centre=gland_centre,
        gland_semi=gland_semi,
        gland_rotation=(u(-0.2, 0.2), u(-0.1, 0.1)),
        tz_centre=tz_centre,
        tz_semi=tz_semi,
        shape_waves=_waves(rng, 6, 60.0),
        shape_amplitude=u(0.03, 0.07),
        texture_waves=_waves(rng, 8, 25.0),
        nodule_waves=_waves(rng, 8, 8.0),
        tissue=tissue,
    )


def _gland_levels(anatomy: _Anatomy, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Level sets of the whole gland (with a smooth shape perturbation) and of the transition zone."""
    rotation = _rotation(*anatomy.gland_rotation)
    gland = _level(points, anatomy.gland_centre, anatomy.gland_semi, rotation)
    # the perturbation factor is at least 1 - amplitude * sqrt(2 n): farther points stay outside, skip them (exact)
    n_waves = len(anatomy.shape_waves[1])
    near = gland * (1.0 - anatomy.shape_amplitude * math.sqrt(2.0 * n_waves)) <= 1.0
    gland[near] *= 1.0 + anatomy.shape_amplitude * _field(points[near], anatomy.shape_waves)
    tz = _level(points, anatomy.tz_centre, anatomy.tz_semi, rotation)
    return gland, tz


def _label_at(anatomy: _Anatomy, points: np.ndarray) -> np.ndarray:
    """Zone label at world ``points``: 0 background, 1 peripheral zone, 2 transition zone."""
    gland, tz = _gland_levels(anatomy, points)
    label = np.zeros(len(points), dtype=np.uint8)
    label[gland <= 1.0] = _PERIPHERAL
    label[(tz <= 1.0) & (gland <= 0.85)] = _TRANSITION  # the transition zone stays inside the peripheral zone
    return label


def _signal_at(anatomy: _Anatomy, points: np.ndarray) -> np.ndarray:
    """T2-like tissue signal in [0, 1] at world ``points`` (painter's order: later structures cover earlier ones)."""
    t = anatomy.tissue
    x = points[:, 0]
    signal = np.zeros(len(points), dtype=np.float64)
    body = _cylinder_level(points, anatomy.body_centre, anatomy.body_semi)
    radius = min(anatomy.body_semi)

    def inner(depth: float) -> np.ndarray:
        return body <= 1.0 - depth / radius

    signal[body <= 1.0] = t["skin"]
    signal[inner(2.0)] = t["fat"]
    signal[inner(2.0 + anatomy.fat)] = t["muscle"]
    signal[inner(2.0 + anatomy.fat + anatomy.muscle)] = t["pelvic_fat"]
    y0 = anatomy.gland_centre[1]
    for side in (-1.0, 1.0):
        bone = _cylinder_level(points, (side * anatomy.bone_x, y0), anatomy.bone_semi)
        signal[bone <= 1.0] = t["cortex"]
        signal[bone <= 1.0 - 2.5 / min(anatomy.bone_semi)] = t["marrow"]
        obturator = _cylinder_level(points, (side * anatomy.obturator_x, y0), (7.0, 20.0))
        signal[(obturator <= 1.0) & (np.abs(x) < anatomy.bone_x - anatomy.bone_semi[0])] = t["muscle"]
    bladder = _level(points, anatomy.bladder_centre, anatomy.bladder_semi)
    signal[bladder <= 1.0] = t["wall"]
    signal[bladder <= 1.0 - 3.0 / min(anatomy.bladder_semi)] = t["urine"]
    rectum = _cylinder_level(points, anatomy.rectum_centre, anatomy.rectum_semi)
    signal[rectum <= 1.0] = t["wall"]
    signal[rectum <= 1.0 - 4.0 / min(anatomy.rectum_semi)] = t["lumen"]

    gland, tz = _gland_levels(anatomy, points)
    inside = np.flatnonzero(gland <= 1.0)
    gland, tz, where = gland[inside], tz[inside], points[inside]
    texture = _field(where, anatomy.texture_waves)
    gland_signal = np.full(len(inside), t["capsule"])
    peripheral = gland <= 1.0 - 1.5 / min(anatomy.gland_semi)
    gland_signal[peripheral] = t["peripheral"] * (1.0 + 0.05 * texture[peripheral])
    transition = (tz <= 1.0) & (gland <= 0.85)
    nodules = _field(where[transition], anatomy.nodule_waves)  # benign hyperplasia: heterogeneous transition zone
    gland_signal[transition] = t["transition"] * (1.0 + 0.04 * texture[transition] + 0.1 * nodules)
    signal[inside] = gland_signal
    return np.clip(signal, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------------
# acquisition


def _direction(orientation: str, tilt: float) -> np.ndarray:
    """3x3 matrix whose columns are the world (RAS) unit vectors of the voxel axes ``i, j, k``."""
    direction = np.zeros((3, 3))
    for column, code in enumerate(orientation.upper()):
        axis, sign = _AXES[code]
        direction[axis, column] = sign
    return _rotation(math.radians(tilt), 0.0) @ direction


def _grid_shape(spec: MRSite, voxel_scale: float) -> tuple[int, int, int]:
    spacing = np.asarray(spec.spacing) * voxel_scale
    return tuple(max(int(round(f / s)), 1) for f, s in zip(spec.fov, spacing))  # type: ignore[return-value]


def mr_site_affine(site: str, centre: Sequence[float] = (0.0, 0.0, 0.0), voxel_scale: float = 1.0) -> np.ndarray:
    """The voxel-to-world (RAS, millimetres) affine of a site's grid whose field of view is centred on ``centre``.

    Args:
        site: a name in :data:`MR_SITES`.
        centre: world position of the field of view's centre.
        voxel_scale: factor applied to the site's voxel spacing (> 0).

    Returns:
        a float64 ``(4, 4)`` affine, as stored in the NIfTI sform and qform.

    Raises:
        ValueError: for an unknown site or a non-positive ``voxel_scale``.
    """
    spec = _get_site(site)
    if not float(voxel_scale) > 0:
        raise ValueError(f"voxel_scale must be > 0, got {voxel_scale}.")
    spacing = np.asarray(spec.spacing, dtype=np.float64) * float(voxel_scale)
    shape = np.asarray(_grid_shape(spec, voxel_scale), dtype=np.float64)
    linear = _direction(spec.orientation, spec.tilt) * spacing[None, :]
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = np.asarray(centre, dtype=np.float64) - linear @ ((shape - 1.0) / 2.0)
    return affine


def _acquire(
    rng: np.random.Generator, spec: MRSite, anatomy: _Anatomy, affine: np.ndarray, shape: tuple[int, int, int]
) -> np.ndarray:
    """Sample the anatomy on the site's grid and simulate the scanner; returns the int16 volume."""
    jit = spec.jitter
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    # thick slices: the signal is the average over the slice profile (partial volume), sampled at n points across k
    ratio = spec.spacing[2] / min(spec.spacing[0], spec.spacing[1])
    n_sub = int(min(max(round(ratio), 1), 4))
    signal = np.zeros(len(world))
    for offset in (np.arange(n_sub) + 0.5) / n_sub - 0.5:
        signal += _signal_at(anatomy, world + offset * affine[:3, 2])
    signal /= n_sub
    signal = signal ** (spec.contrast * math.exp(rng.normal(0.0, jit / 2.0)))

    if spec.bias > 0:
        strength = spec.bias * math.exp(rng.normal(0.0, jit))
        signal *= np.exp(strength * _field(world, _waves(rng, 4, spec.bias_wavelength)))
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
    return np.clip(values, -_INT16_MAX, _INT16_MAX).astype(np.int16).reshape(shape)


def synthesize_mr_case(
    site: str, split: str, index: int, seed: int = 0, voxel_scale: float = 1.0, labels: str = "zones"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one case of a site in memory.

    The anatomy depends only on ``(seed, site name, split, index)`` and is drawn from the same distribution at every
    site; the acquisition depends on the site's parameters and its own random stream.

    Args:
        site: a name in :data:`MR_SITES`.
        split: ``"train"`` or ``"test"``.
        index: index of the case within the site's split (non-negative).
        seed: non-negative base seed.
        voxel_scale: factor applied to the site's voxel spacing (> 0); 2 halves every side of the volume.
        labels: ``"zones"`` (1 peripheral, 2 transition zone) or ``"gland"`` (1 whole gland).

    Returns:
        ``(image, label, affine)``: ``image`` int16 and ``label`` uint8, both of the site's grid shape in stored
        voxel order; ``affine`` the float64 voxel-to-world (RAS) matrix.

    Raises:
        ValueError: for an unknown site, split or label mode, a negative seed or index, or a bad ``voxel_scale``.
    """
    spec = _get_site(site)
    split = look_up_option(split, MR_SPLITS)
    labels = look_up_option(labels, MR_LABEL_MODES)
    if int(seed) < 0 or int(index) < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}.")
    anatomy_rng, acquisition_rng = _case_rngs(seed, site, split, index)
    anatomy = _draw_anatomy(anatomy_rng)
    shift = acquisition_rng.uniform(-spec.fov_shift, spec.fov_shift, 3)
    affine = mr_site_affine(site, np.asarray(anatomy.gland_centre) + shift, voxel_scale)
    shape = _grid_shape(spec, voxel_scale)
    image = _acquire(acquisition_rng, spec, anatomy, affine, shape)
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    label = _label_at(anatomy, ijk @ affine[:3, :3].T + affine[:3, 3]).reshape(shape)
    if labels == "gland":
        label = (label > 0).astype(np.uint8)
    return image, label, affine


# ---------------------------------------------------------------------------------------------------------------------
# writing


def _nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """Gzipped NIfTI-1 bytes with sform and qform set to ``affine`` (code 1, scanner) and a zero gzip time stamp."""
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)


def _manifest(
    seed: int, num_train: int, num_test: int, val_fraction: float, voxel_scale: float, labels: str, sites: list[str]
) -> dict:
    record = {
        "generator": "monai_tta.data.mr_sites",
        "version": MR_GENERATOR_VERSION,
        "seed": int(seed),
        "num_train": int(num_train),
        "num_test": int(num_test),
        "val_fraction": float(val_fraction),
        "voxel_scale": float(voxel_scale),
        "labels": labels,
        "sites": {name: asdict(MR_SITES[name]) for name in sites},
    }
    return json.loads(json.dumps(record))  # normalise tuples to lists, as read back from disk


def _is_complete(root: Path, manifest: dict) -> bool:
    manifest_file, datalist_file = root / MANIFEST_NAME, root / DATALIST_NAME
    if not (manifest_file.is_file() and datalist_file.is_file()):
        return False
    try:
        if json.loads(manifest_file.read_text()) != manifest:
            return False
        datalist = json.loads(datalist_file.read_text())
        for name in manifest["sites"]:
            for part in ("train", "val", "test"):
                for item in datalist[f"{name}_{part}"]:
                    if not ((root / item[DataKeys.IMAGE]).is_file() and (root / item[DataKeys.LABEL]).is_file()):
                        return False
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return False
    return True


def generate_mr_sites(
    root: str | Path,
    num_train: int = 8,
    num_test: int = 4,
    seed: int = 0,
    sites: Sequence[str] | None = None,
    voxel_scale: float = 1.0,
    labels: str = "zones",
    val_fraction: float = 0.25,
    overwrite: bool = False,
) -> Path:
    """Write a multi-site synthetic prostate MR data set (NIfTI) and its MONAI datalist.

    Layout under ``root`` (Decathlon-like, one folder per site)::

        <site>/imagesTr/<site>_train_<index:03d>.nii.gz   int16 image, the site's grid, orientation and affine
        <site>/labelsTr/<site>_train_<index:03d>.nii.gz   uint8 label, same grid and affine
        <site>/imagesTs/<site>_test_<index:03d>.nii.gz
        <site>/labelsTs/<site>_test_<index:03d>.nii.gz
        datalist.json                                      MONAI datalist, paths relative to root
        manifest.json                                      generator version, arguments and site parameters

    ``datalist.json`` holds ``"domains"`` (the generated site names, in order), ``"labels"`` (name of each label
    value) and three sections per site, of items with ``image``, ``label``, ``domain`` (the site) and ``case_id``:
    ``"<site>_train"`` and ``"<site>_val"`` (the first ``1 - val_fraction`` and the last ``val_fraction`` of the
    training cases) and ``"<site>_test"``. The source site's sections are ``"source_train"``, ``"source_val"`` and
    ``"source_test"``.

    Each case is drawn from its own generator seeded by ``(seed, site name, split, index)``, so the same arguments
    give byte-identical files (the gzip time stamp is zero), and a site's cases do not depend on which other sites
    are generated. When ``manifest.json`` matches the request and every listed file exists, nothing is rewritten
    (unless ``overwrite``). Files of an earlier, different request that the new datalist does not list are left in
    place. Every file is written atomically, the manifest last.

    Args:
        root: output folder (created if needed).
        num_train: training cases per site (>= 1), split into train and val.
        num_test: test cases per site (>= 1).
        seed: non-negative base seed.
        sites: names from :data:`MR_SITES`; ``None`` generates all of them in registry order.
        voxel_scale: factor applied to every site's voxel spacing (> 0); 2 halves every side of the volumes.
        labels: ``"zones"`` (1 peripheral zone, 2 transition zone) or ``"gland"`` (1 whole gland).
        val_fraction: fraction of each site's training cases put in ``"<site>_val"``, in [0, 1).
        overwrite: regenerate even when the folder is complete.

    Returns:
        the path of the written ``datalist.json``.

    Raises:
        ValueError: for an unknown or repeated site name, or invalid counts, seed, scale, label mode or fraction.
    """
    names = list_mr_sites() if sites is None else [str(s) for s in ([sites] if isinstance(sites, str) else sites)]
    if not names:
        raise ValueError("sites must name at least one site.")
    for name in names:
        _get_site(name)
    if len(set(names)) != len(names):
        raise ValueError(f"sites must not repeat a name, got {names}.")
    if int(num_train) < 1 or int(num_test) < 1:
        raise ValueError(f"num_train and num_test must be >= 1, got {num_train} and {num_test}.")
    if int(seed) < 0:
        raise ValueError(f"seed must be non-negative, got {seed}.")
    if not float(voxel_scale) > 0:
        raise ValueError(f"voxel_scale must be > 0, got {voxel_scale}.")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    labels = look_up_option(labels, MR_LABEL_MODES)

    root = Path(root)
    manifest = _manifest(seed, num_train, num_test, val_fraction, voxel_scale, labels, names)
    datalist_file = root / DATALIST_NAME
    if not overwrite and _is_complete(root, manifest):
        return datalist_file

    label_names = {"0": "background", "1": "peripheral zone", "2": "transition zone"}
    if labels == "gland":
        label_names = {"0": "background", "1": "gland"}
    datalist: dict = {
        "name": "mr_sites",
        "description": "Synthetic multi-site prostate-like T2 MR volumes (NIfTI, RAS world); see manifest.json.",
        "domains": names,
        "labels": label_names,
    }
    for name in names:
        split_items: dict[str, list[dict]] = {}
        for split, count, folder in (("train", num_train, "Tr"), ("test", num_test, "Ts")):
            items = []
            for index in range(int(count)):
                case_id = f"{name}_{split}_{index:03d}"
                image, label, affine = synthesize_mr_case(name, split, index, seed, voxel_scale, labels)
                image_rel = f"{name}/images{folder}/{case_id}.nii.gz"
                label_rel = f"{name}/labels{folder}/{case_id}.nii.gz"
                atomic_write_bytes(_nifti_bytes(image, affine), root / image_rel)
                atomic_write_bytes(_nifti_bytes(label, affine), root / label_rel)
                items.append(
                    {
                        DataKeys.IMAGE.value: image_rel,
                        DataKeys.LABEL.value: label_rel,
                        DataKeys.DOMAIN.value: name,
                        DataKeys.CASE_ID.value: case_id,
                    }
                )
            split_items[split] = items
        train = split_items["train"]
        n_train = max(len(train) - int(round(len(train) * float(val_fraction))), 1)
        datalist[f"{name}_train"] = train[:n_train]
        datalist[f"{name}_val"] = train[n_train:]
        datalist[f"{name}_test"] = split_items["test"]
    atomic_write_json(datalist, datalist_file)
    atomic_write_json(manifest, root / MANIFEST_NAME)  # last: marks the folder complete
    return datalist_file
