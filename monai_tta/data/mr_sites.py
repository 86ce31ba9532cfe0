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
``docs/data/mr_sites.md`` says what each site changes and why it is realistic. In short (spacing and field of view in
stored voxel order, millimetres):

==============  ================  ===============  ===============  ====================  =========================
site            stored axes       spacing          field of view    intensity             bias / coil, noise
==============  ================  ===============  ===============  ====================  =========================
``source``      RAS               2.0 x 2.0 x 3.0  120 x 120 x 72   x1000                 0.10; Rician 2 %
``thick``       LPS               2.4 x 2.4 x 4.5  150 x 150 x 81   x400, contrast 0.8    0.10; Rician 5 %
``endorectal``  LAS               1.6 x 1.6 x 3.6  100 x 100 x 72   x3000                 0.10 + coil; Rician 1.5 %
``sagittal``    ASL (permuted)    1.8 x 1.8 x 4.0  120 x 108 x 100  x1000, contrast 1.25  0.15; Rician 2 %
``oblique``     LPS, tilt 12 deg  2.0 x 2.0 x 3.0  120 x 120 x 75   x800 + 200            0.10; Gaussian 3 %
``bias``        RAS               1.8 x 1.8 x 2.5  90 x 90 x 66     x1500                 0.35; Rician 3 %
==============  ================  ===============  ===============  ====================  =========================

Labels follow the Medical Segmentation Decathlon prostate task: ``0`` background, ``1`` peripheral zone, ``2``
transition zone; ``labels="gland"`` writes the whole gland as ``1``.

Example::

    from monai_tta.data import generate_mr_sites, load_datalist

    datalist_file = generate_mr_sites("./data/mr_sites", num_train=8, num_test=4)
    sections = load_datalist(datalist_file)  # {"source_train": [...], "source_val": [...], "source_test": [...], ...}
"""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.utils import look_up_option

from monai_tta.data.generated import DATALIST_NAME, as_json, is_complete, write_generated
from monai_tta.data.keys import DataKeys
from monai_tta.data.mr_phantom import (
    PelvisPhantom,
    draw_pelvis,
    phantom_label,
    phantom_signal,
    random_waves,
    rotation_matrix,
    smooth_field,
)
from monai_tta.data.synthetic import SOURCE_DOMAIN
from monai_tta.io import atomic_write_bytes

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

MR_GENERATOR_VERSION = 2
"""Bumped whenever the rendering changes, so cached folders are regenerated."""

MR_LABEL_MODES = ("zones", "gland")
"""``zones``: 1 peripheral zone, 2 transition zone (Decathlon prostate); ``gland``: 1 whole gland."""

MR_SPLITS = ("train", "test")
"""Case splits. Every site has both: a per-site source model is trained on ``train`` and evaluated on ``test``."""

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
# acquisition


def _direction(orientation: str, tilt: float) -> np.ndarray:
    """3x3 matrix whose columns are the world (RAS) unit vectors of the voxel axes ``i, j, k``."""
    direction = np.zeros((3, 3))
    for column, code in enumerate(orientation.upper()):
        axis, sign = _AXES[code]
        direction[axis, column] = sign
    return rotation_matrix(math.radians(tilt), 0.0) @ direction


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


def _voxel_centres(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """World (RAS) positions of the voxel centres, ``(N, 3)`` float32 in C order of ``shape``."""
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    return (ijk @ affine[:3, :3].T + affine[:3, 3]).astype(np.float32)


def _acquire(
    rng: np.random.Generator, spec: MRSite, anatomy: PelvisPhantom, affine: np.ndarray, world: np.ndarray
) -> np.ndarray:
    """Sample the anatomy at the voxel centres ``world`` and simulate the scanner; returns the flat int16 signal."""
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
    anatomy = draw_pelvis(anatomy_rng)
    shift = acquisition_rng.uniform(-spec.fov_shift, spec.fov_shift, 3)
    affine = mr_site_affine(site, np.asarray(anatomy.gland_centre) + shift, voxel_scale)
    shape = _grid_shape(spec, voxel_scale)
    world = _voxel_centres(affine, shape)
    image = _acquire(acquisition_rng, spec, anatomy, affine, world).reshape(shape)
    label = phantom_label(anatomy, world).reshape(shape)
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
    return as_json(record)


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
    place. Every file is written atomically, the manifest last; only the datalist and the manifest are fsynced, so
    after a system crash (not a killed process) call again with ``overwrite=True``.

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
    if not overwrite and is_complete(root, manifest):
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
                # atomic but not fsynced one by one (a quarter of the time): a killed run leaves no partial file;
                # after a system crash, regenerate with overwrite=True
                atomic_write_bytes(_nifti_bytes(image, affine), root / image_rel, sync=False)
                atomic_write_bytes(_nifti_bytes(label, affine), root / label_rel, sync=False)
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
    return write_generated(root, datalist, manifest)
