"""Export a bundle as the Model Zoo wants it: one self-contained folder.

``python -m monai_tta.zoo export bundles/grata_fundus_segmentation out/grata_fundus_segmentation --url <URL>`` writes::

    configs/, docs/, LICENSE       the bundle's files, JSON in the zoo's pretty-format-json style
    scripts/__init__.py            puts scripts/ on sys.path, so that ``monai_tta`` resolves to the copy below
    scripts/monai_tta/             this package's source (pure Python; ``monai_tta.zoo`` too: the configs call its
                                   ``source`` helpers), isort + black
                                   formatted with the zoo's settings (:mod:`monai_tta.zoo.style`)
    models/model.pt                the checkpoint given, else made by the bundle's own run (:data:`MODEL_CONFIGS`)
    models/model.ts                TorchScript of network_def with model.pt (MONAI's ckpt_export, torch.jit.script)
    large_files.yml                path, ``<URL>/<file name>`` and md5 of the two model files

The folder is written under a temporary name next to the destination and renamed onto it at the end; a failure
removes it. Without a URL the export refuses before writing anything (the zoo's CI downloads what large_files.yml
lists).

Why bundle-local code and not a wheel: the zoo installs a bundle's requirements with ``pip install`` of
``name==version`` lines made from ``required_packages_version`` (``ci/get_bundle_requirements.py``), so a package
that is not on PyPI (``monai_tta``) cannot be listed there, and a wheel file has no place in that step; code in
``scripts/`` is the zoo's way for bundle-local Python (the zoo puts the bundle folder on ``sys.path``). The exported
metadata therefore lists, instead of ``monai_tta``, the distributions that the copied code and the configs import, at
the versions installed where the export ran, plus ``fire`` (:func:`exported_requirements`).
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from monai_tta.io import atomic_write_text
from monai_tta.zoo.checks import bundle_on_path, file_hash
from monai_tta.zoo.generate import RUNTIME_DIRS
from monai_tta.zoo.style import format_for_zoo

__all__ = [
    "export_bundle",
    "exported_requirements",
    "RUNNER_PACKAGES",
    "METADATA_PACKAGES",
    "HOSTED_FILES",
    "MODEL_CONFIGS",
    "SCRIPTS_INIT",
]

#: what ``python -m monai.bundle run`` needs besides the bundle's code: MONAI's bundle command line is ``fire``.
RUNNER_PACKAGES = ("fire",)
#: packages with their own metadata field (``monai_version``, ``pytorch_version``, ``numpy_version``).
METADATA_PACKAGES = ("monai", "torch", "numpy")
#: the files of an export that the zoo hosts outside git (``large_files.yml``).
HOSTED_FILES = ("models/model.pt", "models/model.ts")
#: the config chains that make ``models/model.pt``, first match wins: a bundle with ``configs/target_model.json``
#: (TGMA: the adapted target model of its offline adaptation, ``adapt.json``) or the source training.
MODEL_CONFIGS = (("adapt.json", "target_model.json"), ("inference.json", "source_training.json"))
#: sub-packages of monai_tta that a bundle never imports. None: the configs call ``monai_tta.zoo.source`` (the source
#: checkpoint) and ``import monai_tta`` imports every sub-package.
_NOT_EXPORTED: tuple[str, ...] = ()
_IMPORT_STRING = re.compile(r"^\$\s*import\s+([A-Za-z_][\w.]*)")

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

    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n == "__pycache__" or n.endswith(".pyc")}
        return skipped | (set(_NOT_EXPORTED) & set(names) if Path(folder) == src else set())

    shutil.copytree(src, dst, ignore=ignore)


def _imported_modules(folder: Path) -> set[str]:
    """Top-level names imported by the Python files under ``folder`` and by its configs' ``"$import x"`` strings,
    leaving out the imports guarded by ``except ImportError`` (optional ones)."""
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        optional = {
            id(node)
            for handler in ast.walk(tree)
            if isinstance(handler, ast.Try)
            and any("ImportError" in ast.unparse(h.type or ast.Name("")) for h in handler.handlers)
            for stmt in handler.body
            for node in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    for path in (folder / "configs").glob("*.json"):
        for value in json.loads(path.read_text()).get("imports", []):
            match = _IMPORT_STRING.match(str(value))
            names.update([match.group(1).split(".")[0]] if match else [])
    return names


def exported_requirements(folder: str | Path, extra: Iterable[str] = RUNNER_PACKAGES) -> dict[str, str]:
    """``required_packages_version`` of an export: the installed version of every distribution whose modules the
    export's code and configs import (besides the standard library, the bundle's own code and
    :data:`METADATA_PACKAGES`), plus ``extra`` (:data:`RUNNER_PACKAGES`: what ``python -m monai.bundle run`` needs).

    Raises:
        RuntimeError: if an imported module belongs to no installed distribution (the export could not pin it).
    """
    folder = Path(folder)
    local = {p.name for p in (folder / "scripts").iterdir() if p.is_dir()} | {"scripts"}
    by_module = importlib.metadata.packages_distributions()
    dists: set[str] = set(extra)
    for name in sorted(_imported_modules(folder) - set(sys.stdlib_module_names) - local):
        found = by_module.get(name)
        if not found:
            raise RuntimeError(f"{folder.name}: the exported code imports {name!r}, which no installed package gives.")
        dists.update(found)
    skip = {d.lower() for d in METADATA_PACKAGES}
    return {d: importlib.metadata.version(d) for d in sorted(dists, key=str.lower) if d.lower() not in skip}


def _large_files_text(out_dir: Path, url: str) -> str:
    lines = ["large_files:"]
    for rel in HOSTED_FILES:
        lines += [
            f'- path: "{rel}"',
            f'  url: "{url.rstrip("/")}/{Path(rel).name}"',
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

    The folder is written under a temporary name next to ``out_dir`` and renamed onto it at the end; a failure removes
    it, so ``out_dir`` is either complete or absent.

    Args:
        bundle_dir: a bundle folder (its runtime folders ``eval``, ``data`` and ``models`` are not copied).
        out_dir: the export folder; must not exist (or be an empty folder).
        checkpoint: the weights to ship as ``models/model.pt``; ``None`` makes them with the bundle's
            :data:`MODEL_CONFIGS` (its source training, or TGMA's adaptation; data and logs in a temporary folder).
        train_overrides: overrides of that run (e.g. ``{"epochs": 1, "image_size": 32}``).
        url: where the files of ``models/`` will be hosted (``large_files.yml`` lists ``<url>/model.pt`` and
            ``<url>/model.ts``, what the zoo's CI downloads). Required: every export hosts its model files.

    Returns:
        the export folder.

    Raises:
        ValueError: if ``url`` is not given (nothing is written).
        FileExistsError: if ``out_dir`` holds files.
        FileNotFoundError: if ``bundle_dir`` has no ``configs/inference.json`` or ``checkpoint`` does not exist.
    """
    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    if not (bundle_dir / "configs" / "inference.json").is_file():
        raise FileNotFoundError(f"{bundle_dir} is not a bundle: configs/inference.json is missing.")
    if not url:
        raise ValueError(
            f"{bundle_dir.name}: the export hosts {', '.join(HOSTED_FILES)} outside git and its large_files.yml needs "
            "their URL; give --url <folder URL where model.pt and model.ts will be downloadable>. Nothing was written."
        )
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"export folder {out_dir} is not empty; give a new folder.")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        _write_export(bundle_dir, work, checkpoint, train_overrides, url)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out_dir


def _write_export(
    bundle_dir: Path,
    out_dir: Path,
    checkpoint: str | Path | None,
    train_overrides: Mapping[str, Any] | None,
    url: str,
) -> None:
    ignore = shutil.ignore_patterns(*RUNTIME_DIRS, "__pycache__")
    shutil.copytree(bundle_dir, out_dir, ignore=ignore, dirs_exist_ok=True)
    _copy_package(out_dir / "scripts" / "monai_tta")
    (out_dir / "scripts" / "__init__.py").write_text(SCRIPTS_INIT)

    inference = out_dir / "configs" / "inference.json"
    config = json.loads(inference.read_text())
    config["imports"] = ["$import scripts"] + [i for i in config.get("imports", []) if i != "$import scripts"]
    inference.write_text(json.dumps(config))
    meta_file = out_dir / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "required_packages_version": exported_requirements(out_dir)}))
    format_for_zoo(out_dir)

    models = out_dir / "models"
    models.mkdir(exist_ok=True)
    with bundle_on_path(out_dir):
        _write_models(out_dir, models, meta_file, inference, checkpoint, train_overrides)
    atomic_write_text(_large_files_text(out_dir, url), out_dir / "large_files.yml")


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
        shutil.copyfile(checkpoint, models / "model.pt")
    else:
        chain = next(c for c in MODEL_CONFIGS if all((out_dir / "configs" / f).is_file() for f in c))
        with tempfile.TemporaryDirectory() as tmp:
            overrides = {
                "dataset_dir": str(Path(tmp) / "data"),
                "output_dir": str(Path(tmp) / "eval"),
                "models_dir": str(Path(tmp) / "models"),
                "ckpt_dir": str(models),
                "ckpt_filename": "model.pt",
                **dict(train_overrides or {}),
            }
            run_bundle(out_dir, list(chain), overrides, logging_file=False)
        for name in RUNTIME_DIRS:  # a run's records, should a config write them under bundle_root: not exported
            if name != "models":
                shutil.rmtree(out_dir / name, ignore_errors=True)
    ckpt_export(
        net_id="network_def",
        filepath=str(models / "model.ts"),
        ckpt_file=str(models / "model.pt"),
        meta_file=str(meta_file),
        config_file=str(inference),
    )
