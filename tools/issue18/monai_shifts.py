"""Issue 18: shifts that no one here designed, made by MONAI's own transforms, written as datalists the benchmark reads.

Usage::

    python tools/issue18/monai_shifts.py --dims 2 OUT [--num 8] [--seed 3]
    python tools/issue18/monai_shifts.py --dims 3 OUT [--num 4] [--seed 3]

Fresh cases of the embedded *source* domain (2D: ``generate_fundus_domains(..., domains=["source"])``; 3D:
``generate_mr_sites(..., sites=["source"])``, their test volumes), drawn with ``--seed`` (not the seed the source
models were trained on), go through each shift below and are written to ``OUT/<shift>/`` with ``OUT/datalist.json``
(2D: one section per shift, as the fundus datalists; 3D: ``<shift>_test`` sections, as the MR sites'), the
unshifted cases as the control ``none``. Then, e.g.::

    python -m monai_tta.bench --dims 2 --data OUT/datalist.json --checkpoint CHECKPOINT_2D ...
    python -m monai_tta.bench --dims 3 --vol-data OUT/datalist.json --vol-checkpoint CHECKPOINT_3D ...

The shifts are MONAI transforms (``monai.transforms``), at MONAI's default strength where MONAI has one and
otherwise at one fixed strength chosen before any method was run on them (2D images in ``[0, 1]``; 3D volumes as
stored, the noise scaled to the volume's standard deviation; a label goes through the spatial ones with nearest
interpolation):

- ``smooth``: ``GaussianSmooth(sigma=1.0)`` (MONAI's default sigma);
- ``gamma_low`` / ``gamma_high``: ``AdjustContrast(gamma=0.5)`` / ``(gamma=2.0)``;
- ``gibbs``: ``GibbsNoise(alpha=0.5)`` (ringing: k-space truncation);
- ``noise``: ``RandGaussianNoise(prob=1, std=0.1)`` (MONAI's default std, which it samples in ``[0, std]`` per call;
  3D: times the volume's std);
- ``bias``: ``RandBiasField(prob=1)`` (MONAI's defaults: degree 3, coefficients in ``[0, 0.1]``);
- ``zoom_out`` / ``zoom_in``: ``Zoom(0.75)`` / ``Zoom(1.3)`` with the size kept (field of view: wider, anatomy
  smaller and surrounded by padding / cropped; 3D: in-plane only);
- ``rotate``: ``Rotate(0.35)`` radians, the size kept (3D: about the slice axis).

Random transforms are seeded per case (``--seed`` plus the case's index).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from monai import transforms as mt

from monai_tta.data import SOURCE_DOMAIN, generate_fundus_domains, generate_mr_sites, load_datalist

SHIFTS = ("none", "smooth", "gamma_low", "gamma_high", "gibbs", "noise", "bias", "zoom_out", "zoom_in", "rotate")
#: 2D masks as stored (RIM-ONE style) -> class index, for the spatial transforms.
FUNDUS_CODES = (255, 128, 0)


def _spatial(name: str, dims: int, nearest: bool) -> Callable[[torch.Tensor], torch.Tensor] | None:
    mode = "nearest" if nearest else "bilinear"
    in_plane = (lambda z: z) if dims == 2 else (lambda z: (z, z, 1.0))
    if name == "zoom_out":
        return mt.Zoom(in_plane(0.75), mode=mode, padding_mode="constant", keep_size=True)
    if name == "zoom_in":
        return mt.Zoom(in_plane(1.3), mode=mode, padding_mode="constant", keep_size=True)
    if name == "rotate":
        angle = 0.35 if dims == 2 else (0.0, 0.0, 0.35)
        return mt.Rotate(angle, keep_size=True, mode=mode, padding_mode="zeros")
    return None


def shift_case(name: str, image: torch.Tensor, label: torch.Tensor, dims: int, seed: int) -> tuple:
    """``(image, label)`` after the shift ``name`` (channel-first tensors; ``label`` as class indices)."""
    if name == "none":
        return image, label
    spatial = _spatial(name, dims, nearest=False)
    if spatial is not None:
        return spatial(image), _spatial(name, dims, nearest=True)(label)
    scale = 1.0 if dims == 2 else float(image.std())
    transform = {
        "smooth": mt.GaussianSmooth(sigma=1.0),
        "gamma_low": mt.AdjustContrast(gamma=0.5),
        "gamma_high": mt.AdjustContrast(gamma=2.0),
        "gibbs": mt.GibbsNoise(alpha=0.5),
        "noise": mt.RandGaussianNoise(prob=1.0, std=0.1 * scale),
        "bias": mt.RandBiasField(prob=1.0),
    }[name]
    if isinstance(transform, mt.Randomizable):
        transform.set_random_state(seed=seed)
    return transform(image), label


def _write_2d(out: Path, num: int, seed: int) -> Path:
    from PIL import Image

    clean = generate_fundus_domains(out / "_clean", num, seed=seed, domains=[SOURCE_DOMAIN])
    items = load_datalist(clean, [SOURCE_DOMAIN])[SOURCE_DOMAIN][:num]
    datalist: dict = {"name": "monai_shifts_2d", "description": __doc__.splitlines()[0], "domains": list(SHIFTS)}
    for name in SHIFTS:
        (out / name / "images").mkdir(parents=True, exist_ok=True)
        (out / name / "masks").mkdir(parents=True, exist_ok=True)
        datalist[name] = []
        for i, item in enumerate(items):
            image = torch.from_numpy(np.asarray(Image.open(item["image"]).convert("RGB"), np.float32) / 255.0)
            mask = np.asarray(Image.open(item["label"]).convert("L"))
            index = np.zeros(mask.shape, np.float32)
            for k, code in enumerate(FUNDUS_CODES):
                index[mask == code] = k
            img, lab = shift_case(name, image.permute(2, 0, 1), torch.from_numpy(index)[None], 2, seed + i)
            img = (np.asarray(img).transpose(1, 2, 0).clip(0.0, 1.0) * 255.0).round().astype(np.uint8)
            stored = np.take(np.asarray(FUNDUS_CODES, np.uint8), np.asarray(lab)[0].round().astype(int))
            case = f"{name}_{i:04d}"
            Image.fromarray(img).save(out / name / "images" / f"{case}.png")
            Image.fromarray(stored).save(out / name / "masks" / f"{case}.png")
            entry = {"image": f"{name}/images/{case}.png", "label": f"{name}/masks/{case}.png"}
            datalist[name].append({**entry, "domain": name, "case_id": case})
    path = out / "datalist.json"
    path.write_text(json.dumps(datalist, indent=1))
    return path


def _write_3d(out: Path, num: int, seed: int) -> Path:
    import nibabel as nib

    clean = generate_mr_sites(out / "_clean", num_train=1, num_test=num, seed=seed, sites=[SOURCE_DOMAIN])
    content = json.loads(Path(clean).read_text())
    items = load_datalist(clean, [f"{SOURCE_DOMAIN}_test"])[f"{SOURCE_DOMAIN}_test"][:num]
    datalist: dict = {"name": "monai_shifts_3d", "description": __doc__.splitlines()[0], "domains": list(SHIFTS)}
    datalist["labels"] = content.get("labels", {})
    for name in SHIFTS:
        (out / name / "imagesTs").mkdir(parents=True, exist_ok=True)
        (out / name / "labelsTs").mkdir(parents=True, exist_ok=True)
        datalist[f"{name}_test"] = []
        for i, item in enumerate(items):
            image_nii, label_nii = nib.load(item["image"]), nib.load(item["label"])
            image = torch.from_numpy(np.asarray(image_nii.dataobj, np.float32))[None]
            label = torch.from_numpy(np.asarray(label_nii.dataobj, np.float32))[None]
            img, lab = shift_case(name, image, label, 3, seed + i)
            case = f"{name}_test_{i:03d}"
            img_nii = nib.Nifti1Image(np.asarray(img)[0].astype(np.float32), image_nii.affine)
            lab_nii = nib.Nifti1Image(np.asarray(lab)[0].round().astype(np.uint8), label_nii.affine)
            nib.save(img_nii, out / name / "imagesTs" / f"{case}.nii.gz")
            nib.save(lab_nii, out / name / "labelsTs" / f"{case}.nii.gz")
            entry = {"image": f"{name}/imagesTs/{case}.nii.gz", "label": f"{name}/labelsTs/{case}.nii.gz"}
            datalist[f"{name}_test"].append({**entry, "domain": name, "case_id": case})
    path = out / "datalist.json"
    path.write_text(json.dumps(datalist, indent=1))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", type=int, choices=(2, 3), required=True)
    p.add_argument("out")
    p.add_argument("--num", type=int, default=None, help="cases per shift (2D: 8, 3D: 4)")
    p.add_argument("--seed", type=int, default=3, help="the fresh source-domain draw and the random shifts")
    args = p.parse_args()
    num = args.num or (8 if args.dims == 2 else 4)
    write = _write_2d if args.dims == 2 else _write_3d
    print(write(Path(args.out), num, args.seed))


if __name__ == "__main__":
    main()
