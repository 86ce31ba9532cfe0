"""Export a bundle as the Model Zoo wants it: one self-contained folder.

``python -m monai_tta.zoo export bundles/grata_fundus_segmentation out/grata_fundus_segmentation`` writes::

    configs/, docs/, LICENSE       the bundle's files (docs/README.md follows the zoo's README template)
    scripts/__init__.py            puts scripts/ on sys.path, so that ``monai_tta`` resolves to the copy below
    scripts/monai_tta/             this package's source (pure Python), imported by the configs' ``_target_``s
    models/model.pt                the source model: trained by source_training.json, or the checkpoint given
    models/model.ts                TorchScript of network_def with model.pt (MONAI's ckpt_export, torch.jit.script)
    large_files.yml                path, url and md5 of the two model files

Why bundle-local code and not a wheel: the zoo installs a bundle's requirements with ``pip install`` of
``name==version`` lines made from ``required_packages_version`` (``ci/get_bundle_requirements.py``), so a package
that is not on PyPI (``monai_tta``) cannot be listed there, and a wheel file has no place in that step; code in
``scripts/`` is the zoo's way for bundle-local Python (the zoo puts the bundle folder on ``sys.path``). The exported
metadata therefore drops ``monai_tta`` from ``required_packages_version`` and pins the third-party packages the copied
code imports, at the versions installed where the export ran.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai_tta.io import atomic_write_text
from monai_tta.zoo.checks import bundle_on_path, file_hash
from monai_tta.zoo.generate import RUNTIME_DIRS, config_text

__all__ = ["export_bundle", "EXPORT_PACKAGES", "SCRIPTS_INIT"]

#: third-party packages of the copied code pinned in the exported metadata (besides monai, torch and numpy).
EXPORT_PACKAGES = ("pytorch-ignite", "nibabel", "pillow", "scipy", "matplotlib", "pyyaml")

#: ``scripts/__init__.py`` of an export: the configs import ``scripts`` first, which makes ``monai_tta`` importable.
SCRIPTS_INIT = '''"""Bundle-local code: a copy of the monai_tta package, made importable as ``monai_tta``."""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
'''


def _copy_package(dst: Path) -> None:
    import monai_tta

    src = Path(monai_tta.__file__).parent
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _exported_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    packages = {}
    for name in EXPORT_PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    meta = dict(meta)
    meta["required_packages_version"] = packages
    return meta


def _large_files_text(out_dir: Path, url: str | None) -> str:
    lines = ["large_files:"]
    for rel in ("models/model.pt", "models/model.ts"):
        link = f"{url.rstrip('/')}/{Path(rel).name}" if url else ""
        lines += [
            f'- path: "{rel}"',
            f'  url: "{link}"',
            f'  hash_val: "{file_hash(out_dir / rel)}"',
            '  hash_type: "md5"',
        ]
    return "\n".join(lines) + "\n"


def export_bundle(
    bundle_dir: str | Path,
    out_dir: str | Path,
    checkpoint: str | Path | None = None,
    train_overrides: Mapping[str, Any] | None = None,
    url: str | None = None,
) -> Path:
    """Write the zoo folder of ``bundle_dir`` into ``out_dir``.

    Args:
        bundle_dir: a bundle folder (its runtime folders ``eval``, ``data`` and ``models`` are not copied).
        out_dir: the export folder; must not exist or be empty.
        checkpoint: source weights to ship as ``models/model.pt``; ``None`` trains them with the bundle's
            ``source_training.json`` (data and logs in a temporary folder).
        train_overrides: overrides of that training run (e.g. ``{"epochs": 1, "image_size": 32}``).
        url: where ``models/`` will be hosted (written into ``large_files.yml``; empty when not given).

    Returns:
        the export folder.

    Raises:
        FileExistsError: if ``out_dir`` holds files.
        FileNotFoundError: if ``bundle_dir`` has no ``configs/inference.json`` or ``checkpoint`` does not exist.
    """
    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    if not (bundle_dir / "configs" / "inference.json").is_file():
        raise FileNotFoundError(f"{bundle_dir} is not a bundle: configs/inference.json is missing.")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"export folder {out_dir} is not empty; give a new folder.")
    out_dir.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns(*RUNTIME_DIRS, "__pycache__")
    shutil.copytree(bundle_dir, out_dir, ignore=ignore, dirs_exist_ok=True)
    _copy_package(out_dir / "scripts" / "monai_tta")
    atomic_write_text(SCRIPTS_INIT, out_dir / "scripts" / "__init__.py")

    inference = out_dir / "configs" / "inference.json"
    config = json.loads(inference.read_text())
    config["imports"] = ["$import scripts"] + [i for i in config.get("imports", []) if i != "$import scripts"]
    atomic_write_text(config_text(config) + "\n", inference)
    meta_file = out_dir / "configs" / "metadata.json"
    atomic_write_text(config_text(_exported_metadata(json.loads(meta_file.read_text()))) + "\n", meta_file)

    models = out_dir / "models"
    models.mkdir(exist_ok=True)
    with bundle_on_path(out_dir):
        _write_models(out_dir, models, meta_file, inference, checkpoint, train_overrides)
    atomic_write_text(_large_files_text(out_dir, url), out_dir / "large_files.yml")
    return out_dir


def _write_models(
    out_dir: Path,
    models: Path,
    meta_file: Path,
    inference: Path,
    checkpoint: str | Path | None,
    train_overrides: Mapping[str, Any] | None,
) -> None:
    from monai.bundle import ckpt_export

    from monai_tta.zoo.run import run_bundle

    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint} does not exist.")
        shutil.copyfile(checkpoint, models / "model.pt")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            overrides = {
                "dataset_dir": str(Path(tmp) / "data"),
                "output_dir": str(Path(tmp) / "eval"),
                "ckpt_dir": str(models),
                "ckpt_filename": "model.pt",
                **dict(train_overrides or {}),
            }
            run_bundle(out_dir, ["inference.json", "source_training.json"], overrides, logging_file=False)
    ckpt_export(
        net_id="network_def",
        filepath=str(models / "model.ts"),
        ckpt_file=str(models / "model.pt"),
        meta_file=str(meta_file),
        config_file=str(inference),
    )
