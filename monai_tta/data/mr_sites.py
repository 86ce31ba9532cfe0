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
magnitude noise or Gaussian) and its intensity scale and offset. The registry :data:`MR_SITES` documents each
default site; the parameters are plausible acquisition differences chosen by hand, none was tuned to favour an
adaptation method. ``docs/data/mr_sites.md`` says what each site changes and why it is realistic. In short (spacing
and field of view in stored voxel order, millimetres):

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

The content sites (:data:`MR_CONTENT_SITES`, preset ``"content"``; :mod:`monai_tta.data.mr_registry`) differ from
the source by what is imaged: ``pelvis`` (a 240 mm field of view and 120 mm of coverage), ``cropped`` (72 x 64 x 54 mm
around the gland), ``bph`` (larger glands with a large transition zone), ``small`` (smaller glands), ``lesion``
(T2-dark peripheral-zone lesions; :mod:`monai_tta.data.mr_variation`), and ``mild`` (a mild acquisition change).
The default sites never change with them.

Labels follow the Medical Segmentation Decathlon prostate task: ``0`` background, ``1`` peripheral zone, ``2``
transition zone; ``labels="gland"`` writes the whole gland as ``1``.

Example::

    from monai_tta.data import generate_mr_sites, load_datalist

    datalist_file = generate_mr_sites("./data/mr_sites", num_train=8, num_test=4)
    sections = load_datalist(datalist_file)  # {"source_train": [...], "source_val": [...], "source_test": [...], ...}
    content = generate_mr_sites("./data/mr_content", num_train=2, num_test=4, sites="content")
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.utils import look_up_option

from monai_tta.data.generated import DATALIST_NAME, as_json, is_complete, write_generated
from monai_tta.data.keys import DataKeys
from monai_tta.data.mr_phantom import draw_pelvis, phantom_label
from monai_tta.data.mr_registry import (
    MR_CONTENT_SITES,
    MR_SITE_PRESETS,
    MR_SITES,
    MRContentSite,
    MRSite,
    get_mr_site,
    list_mr_sites,
    resolve_mr_sites,
)
from monai_tta.data.mr_scanner import acquire_signal, grid_shape, mr_site_affine, voxel_centres
from monai_tta.data.mr_variation import PelvisVariation, vary_pelvis
from monai_tta.io import atomic_write_bytes

__all__ = [
    "MRSite",
    "MRContentSite",
    "PelvisVariation",
    "MR_SITES",
    "MR_CONTENT_SITES",
    "MR_SITE_PRESETS",
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


def _case_rngs(seed: int, site: str, split: str, index: int) -> tuple[np.random.Generator, ...]:
    """Three independent streams of one case: its anatomy, its acquisition and its site's content variation."""
    # crc32 of names (not registry positions) keeps a site's cases stable when sites are added; the first two
    # children of spawn(3) are those of spawn(2), so the default sites' cases are as before the third stream
    sequence = np.random.SeedSequence([int(seed), zlib.crc32(site.encode()), zlib.crc32(split.encode()), int(index)])
    return tuple(np.random.default_rng(child) for child in sequence.spawn(3))


def synthesize_mr_case(
    site: str, split: str, index: int, seed: int = 0, voxel_scale: float = 1.0, labels: str = "zones"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one case of a site in memory.

    The anatomy depends only on ``(seed, site name, split, index)`` and is drawn from the same distribution at every
    site; the acquisition depends on the site's parameters and its own random stream.

    Args:
        site: a name in :data:`MR_SITES` or :data:`MR_CONTENT_SITES`.
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
    spec = get_mr_site(site)
    split = look_up_option(split, MR_SPLITS)
    labels = look_up_option(labels, MR_LABEL_MODES)
    if int(seed) < 0 or int(index) < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}.")
    anatomy_rng, acquisition_rng, variation_rng = _case_rngs(seed, site, split, index)
    anatomy = draw_pelvis(anatomy_rng)
    if isinstance(spec, MRContentSite):
        anatomy = vary_pelvis(anatomy, spec.anatomy, variation_rng)
    shift = acquisition_rng.uniform(-spec.fov_shift, spec.fov_shift, 3)
    affine = mr_site_affine(site, np.asarray(anatomy.gland_centre) + shift, voxel_scale)
    shape = grid_shape(spec, voxel_scale)
    world = voxel_centres(affine, shape)
    image = acquire_signal(acquisition_rng, spec, anatomy, affine, world).reshape(shape)
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
        "sites": {name: asdict(get_mr_site(name)) for name in sites},
    }
    return as_json(record)


def generate_mr_sites(
    root: str | Path,
    num_train: int = 8,
    num_test: int = 4,
    seed: int = 0,
    sites: str | Sequence[str] | None = None,
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
        sites: names from :data:`MR_SITES` or :data:`MR_CONTENT_SITES`, or a preset name of
            :data:`MR_SITE_PRESETS` (``"content"``: the source and the content sites; ``"all"``); ``None`` generates
            the default sites in registry order.
        voxel_scale: factor applied to every site's voxel spacing (> 0); 2 halves every side of the volumes.
        labels: ``"zones"`` (1 peripheral zone, 2 transition zone) or ``"gland"`` (1 whole gland).
        val_fraction: fraction of each site's training cases put in ``"<site>_val"``, in [0, 1).
        overwrite: regenerate even when the folder is complete.

    Returns:
        the path of the written ``datalist.json``.

    Raises:
        ValueError: for an unknown or repeated site name, or invalid counts, seed, scale, label mode or fraction.
    """
    names = resolve_mr_sites(sites)
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
