"""Bad input files for the reliability tests: each kind a user can hit, written next to good cases.

``write_bad_png_cases`` writes the kinds a PNG bundle can meet, ``write_bad_nifti_cases`` those that need a
floating-point or volumetric format (NaN, Inf, a 3D volume, a corrupt NIfTI), ``write_bad_volume_cases`` every kind
a 3D (volume) bundle can meet. Each returns datalist items whose ``case_id`` is the kind, and ``EXPECTED`` (2D) and
``EXPECTED_VOLUME`` (3D) give a piece of the reason each must be recorded with.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

__all__ = [
    "PNG_KINDS",
    "NIFTI_KINDS",
    "VOLUME_KINDS",
    "EXPECTED",
    "EXPECTED_VOLUME",
    "write_bad_png_cases",
    "write_bad_nifti_cases",
    "write_bad_volume_cases",
]

PNG_KINDS = (
    "missing_file",
    "unreadable_file",
    "corrupt_png",
    "wrong_channels",
    "constant_image",
    "too_small",
    "too_large",
    "label_mismatch",
)
NIFTI_KINDS = ("corrupt_nifti", "wrong_dimensionality", "nan_voxels", "inf_voxels")
VOLUME_KINDS = (
    "missing_file",
    "unreadable_file",
    "corrupt_nifti",
    "wrong_channels",
    "wrong_dimensionality",
    "constant_image",
    "nan_voxels",
    "inf_voxels",
    "too_small",
    "too_large",
    "label_mismatch",
)

#: a piece of the recorded reason of each kind.
EXPECTED = {
    "missing_file": "missing.png does not exist; check the datalist",
    "unreadable_file": "not an image; PIL.UnidentifiedImageError: cannot identify image file",
    "corrupt_png": "corrupt.png, label",
    "wrong_channels": "the image has 1 channels but the network takes 3",
    "constant_image": "the image is constant",
    "too_small": "far too small",
    "too_large": "far too large",
    "label_mismatch": "does not match the image's",
    "corrupt_nifti": "EOFError: Compressed file ended before the end-of-stream marker was reached",
    "wrong_dimensionality": "expected a 2D image shaped (C, *spatial)",
    "nan_voxels": "NaN",
    "inf_voxels": "infinite voxels",
}


def _item(kind: str, image: str | Path, label: str | Path, domain: str) -> dict:
    return {"image": str(image), "label": str(label), "domain": domain, "case_id": kind}


def _write_broken_files(folder: Path, good: dict, suffix: str, item, corrupt_kind: str, keep: float) -> None:
    """The kinds that cannot be read: a missing file, a file that is not an image, the first ``keep`` of a good one."""
    item("missing_file", folder / f"missing{suffix}")
    (folder / f"unreadable{suffix}").write_bytes(b"this is not an image\n" * 10)
    item("unreadable_file", folder / f"unreadable{suffix}")
    data = Path(good["image"]).read_bytes()
    (folder / f"corrupt{suffix}").write_bytes(data[: int(len(data) * keep)])
    item(corrupt_kind, folder / f"corrupt{suffix}")


def write_bad_png_cases(folder: Path, good: dict, domain: str) -> list[dict]:
    """Datalist items of every PNG kind; ``good`` is a good item (its image and label are used as material)."""
    folder.mkdir(parents=True, exist_ok=True)
    image, label = np.asarray(Image.open(good["image"])), np.asarray(Image.open(good["label"]))
    h, w = image.shape[:2]
    items: dict[str, dict] = {}

    def item(kind: str, img: Path, lab: str | Path = good["label"]) -> None:
        items[kind] = _item(kind, img, lab, domain)

    _write_broken_files(folder, good, ".png", item, "corrupt_png", keep=1 / 2)
    Image.fromarray(image[..., 0]).save(folder / "grey.png")
    item("wrong_channels", folder / "grey.png")
    Image.fromarray(np.full_like(image, 128)).save(folder / "constant.png")
    item("constant_image", folder / "constant.png")
    Image.fromarray(image[:8, :8]).save(folder / "small.png")
    Image.fromarray(label[:8, :8]).save(folder / "small_label.png")
    item("too_small", folder / "small.png", folder / "small_label.png")
    big = np.tile(image[:16, :4], (2, 2100, 1))  # 32 x 8400: wider than the bundle's max_image_size (8192)
    Image.fromarray(big).save(folder / "large.png")
    item("too_large", folder / "large.png")
    Image.fromarray(label[: h // 2, : w // 2]).save(folder / "half_label.png")
    shutil.copy(good["image"], folder / "mismatch.png")
    item("label_mismatch", folder / "mismatch.png", folder / "half_label.png")
    return [items[k] for k in PNG_KINDS]


def write_bad_nifti_cases(folder: Path, good: dict, domain: str) -> list[dict]:
    """Datalist items of every NIfTI kind; ``good`` is a good 2D NIfTI item."""
    folder.mkdir(parents=True, exist_ok=True)
    img = nib.load(good["image"]).get_fdata().astype(np.float32)
    items = {}

    def save(name: str, arr: np.ndarray) -> Path:
        path = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(arr, np.eye(4)), path)
        return path

    def item(kind: str, path: Path) -> None:
        items[kind] = {"image": str(path), "label": good["label"], "domain": domain, "case_id": kind}

    data = Path(good["image"]).read_bytes()
    (folder / "corrupt.nii.gz").write_bytes(data[: len(data) // 3])
    item("corrupt_nifti", folder / "corrupt.nii.gz")
    item("wrong_dimensionality", save("volume", np.stack([img] * 4, axis=-1)))
    nan = img.copy()
    nan[3, 4] = np.nan
    item("nan_voxels", save("nan", nan))
    inf = img.copy()
    inf[5, 6] = np.inf
    item("inf_voxels", save("inf", inf))
    return [items[k] for k in NIFTI_KINDS]


#: a piece of the recorded reason of each kind, for a 1-channel 3D bundle (``min_image_size`` 4, ``max_image_size``
#: 2048).
EXPECTED_VOLUME = {
    "missing_file": "missing.nii.gz does not exist; check the datalist",
    "unreadable_file": "unreadable.nii.gz, label",
    "corrupt_nifti": "corrupt.nii.gz, label",  # the error's own line may be cut: two long paths come first
    "wrong_channels": "the image has 2 channels but the network takes 1",
    "wrong_dimensionality": "expected a 3D image shaped (C, *spatial) (4 axes), got shape (1, ",
    "constant_image": "the image is constant",
    "nan_voxels": "the image has 1 NaN and 0 infinite voxels",
    "inf_voxels": "the image has 0 NaN and 1 infinite voxels",
    "too_small": "far too small: spatial size (3, 3, 3), expected at least 4",
    "too_large": "far too large",
    "label_mismatch": "does not match the image's",
}


def write_bad_volume_cases(folder: Path, good: dict, domain: str) -> list[dict]:
    """Datalist items of every volume kind; ``good`` is a good 3D NIfTI item (its volume, label and affine are used
    as material)."""
    folder.mkdir(parents=True, exist_ok=True)
    source = nib.load(good["image"])
    img, affine = source.get_fdata().astype(np.float32), source.affine
    label = np.asarray(nib.load(good["label"]).dataobj)
    items: dict[str, dict] = {}

    def save(name: str, arr: np.ndarray) -> Path:
        path = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(arr, affine), path)
        return path

    def item(kind: str, path: Path, lab: str | Path = good["label"]) -> None:
        items[kind] = _item(kind, path, lab, domain)

    _write_broken_files(folder, good, ".nii.gz", item, "corrupt_nifti", keep=1 / 3)
    item("wrong_channels", save("two_channels", np.stack([img, img[::-1]], axis=-1)))
    item("wrong_dimensionality", save("slice", img[..., img.shape[-1] // 2]))
    item("constant_image", save("constant", np.full_like(img, 100.0)))
    nan, inf = img.copy(), img.copy()
    nan[3, 4, 2] = np.nan
    inf[5, 6, 1] = np.inf
    item("nan_voxels", save("nan", nan))
    item("inf_voxels", save("inf", inf))
    item("too_small", save("small", img[:3, :3, :3]))
    reps = 2049 // img.shape[-1] + 1  # longer than the bundle's max_image_size (2048) along the slices
    item("too_large", save("large", np.tile(img, (1, 1, reps))))
    item("label_mismatch", save("mismatch", img), save("half_label", label[: label.shape[0] // 2]))
    return [items[k] for k in VOLUME_KINDS]
