"""The Model Zoo CI's checks of a bundle, made offline and without writing into the bundle folder.

Written from what the zoo's CI does (``ci/verify_bundle.py`` in min mode, ``ci/unit_tests``) and MONAI's bundle
scripts; the code is ours. Differences from the zoo's CI, all deliberate:

- the metadata schema is the committed copy of the released ``meta_schema_20240725.json`` (:data:`SCHEMA_FILE`,
  byte-identical, md5 :data:`SCHEMA_MD5`), not a download;
- ``large_files.yml`` is checked against the files present (each listed file exists and has the listed hash) instead of
  downloading them;
- the TorchScript check exports to a temporary folder, not to ``models/verify_model.ts`` inside the bundle;
- the version check does not look for the version in the zoo's ``model_info.json`` (which only the zoo holds);
- the code-format check (:func:`check_code_format`) runs the zoo's tools with the zoo's settings
  (:mod:`monai_tta.zoo.style`) on a copy of the bundle laid out as ``models/<name>/`` in a temporary folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "SCHEMA_FILE",
    "SCHEMA_MD5",
    "ZOO_CHECKS",
    "check_schema",
    "check_min_mode",
    "check_net_in_out",
    "check_torchscript",
    "check_infer_properties",
    "check_workflow",
    "check_code_format",
    "run_checks",
    "file_hash",
    "snapshot",
    "bundle_on_path",
]

#: the released Model Zoo metadata schema (MONAI's ``monai/bundle/meta_schema.json`` at git ``45c798391``).
SCHEMA_FILE = Path(__file__).with_name("meta_schema_20240725.json")
#: md5 of the released file.
SCHEMA_MD5 = "06954cad2cc5d3784e72077ac76f0fc8"

_NECESSARY = ("configs/metadata.json", "LICENSE")
_PREFERRED = ("models/model.pt", "configs/inference")
_CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


def file_hash(path: str | Path, hash_type: str = "md5") -> str:
    """Hex digest of a file (``md5``, ``sha1``, ``sha256`` or ``sha512``)."""
    digest = hashlib.new(hash_type)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def snapshot(folder: str | Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time (to show that a check wrote nothing)."""
    folder = Path(folder)
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


@contextlib.contextmanager
def bundle_on_path(bundle: str | Path) -> Iterator[None]:
    """Put the bundle folder first on ``sys.path`` (as the zoo's CI does), so that its ``scripts`` package imports."""
    root = str(Path(bundle).resolve())
    sys.path.insert(0, root)
    try:
        yield
    finally:
        if root in sys.path:
            sys.path.remove(root)


def _files(bundle: Path) -> tuple[Path, Path]:
    return bundle / "configs" / "metadata.json", bundle / "configs" / "inference.json"


def check_schema(bundle: str | Path) -> None:
    """``verify_metadata`` against the committed copy of the released schema.

    Raises:
        RuntimeError: if the schema copy is not the released file.
        ValueError: if the metadata does not validate (MONAI's message).
    """
    from monai.bundle import verify_metadata

    if file_hash(SCHEMA_FILE) != SCHEMA_MD5:
        raise RuntimeError(f"{SCHEMA_FILE} is not the released schema (md5 {SCHEMA_MD5}); restore it from git.")
    meta, _ = _files(Path(bundle))
    verify_metadata(meta_file=str(meta), filepath=str(SCHEMA_FILE))


def check_min_mode(bundle: str | Path) -> None:
    """What ``ci/verify_bundle.py -m min`` checks: necessary and preferred files, version and changelog, the large
    files (present, with their hash, instead of downloaded) and the metadata schema.

    Raises:
        ValueError: naming the first file or field that is wrong.
    """
    import yaml

    bundle = Path(bundle)
    for rel in _NECESSARY:
        if not (bundle / rel).is_file():
            raise ValueError(f"{bundle.name}: necessary file {rel} is missing.")
    for rel in _PREFERRED:
        candidates = [bundle / rel] if Path(rel).suffix else [bundle / (rel + s) for s in _CONFIG_SUFFIXES]
        if not any(c.is_file() for c in candidates):
            raise ValueError(f"{bundle.name}: preferred file {rel} is missing (run `python -m monai_tta.zoo export`).")
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    if "changelog" not in meta or meta.get("version") not in meta["changelog"]:
        version = meta.get("version")
        raise ValueError(f"{bundle.name}: version {version!r} must be a key of 'changelog' in metadata.json.")
    large = [bundle / f"large_files{s}" for s in (".yml", ".yaml", ".json")]
    large_file = next((p for p in large if p.is_file()), None)
    if large_file is not None:
        listed = (yaml.safe_load(large_file.read_text()) or {}).get("large_files", [])
        for item in listed:
            path = bundle / item["path"]
            if not path.is_file():
                raise ValueError(f"{bundle.name}: {large_file.name} lists {item['path']}, which is missing.")
            if "hash_val" in item and file_hash(path, item.get("hash_type", "md5")) != item["hash_val"]:
                raise ValueError(f"{bundle.name}: {item['path']} does not match its hash in {large_file.name}.")
    check_schema(bundle)


def check_net_in_out(bundle: str | Path) -> None:
    """``verify_net_in_out`` of ``network_def`` on the CPU with the metadata's input and output formats."""
    from monai.bundle import verify_net_in_out

    meta, config = _files(Path(bundle))
    verify_net_in_out(net_id="network_def", meta_file=str(meta), config_file=str(config), device="cpu", n=1)


def check_torchscript(bundle: str | Path) -> None:
    """``ckpt_export`` of ``network_def`` with ``models/model.pt`` (into a temporary folder), then ``torch.jit.load`` of
    the export and of ``models/model.ts`` when the bundle has one; both give the checkpoint's output.

    Raises:
        ValueError: if a TorchScript model does not reproduce the network.
    """
    import torch
    from monai.bundle import ConfigParser, ckpt_export

    bundle = Path(bundle)
    meta, config = _files(bundle)
    with tempfile.TemporaryDirectory() as tmp:
        exported = Path(tmp) / "verify_model.ts"
        ckpt_export(
            net_id="network_def",
            filepath=str(exported),
            ckpt_file=str(bundle / "models" / "model.pt"),
            meta_file=str(meta),
            config_file=str(config),
        )
        parser = ConfigParser()
        parser.read_config(str(config))
        parser.read_meta(str(meta))
        net = parser.get_parsed_content("network_def")
        state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(state.get("model", state) if isinstance(state, Mapping) else state)
        net.eval()
        image = parser.get_parsed_content("_meta_::network_data_format::inputs::image")
        spatial = [32] * len(image["spatial_shape"])  # 32: a multiple of every "k*n" our metadata declares
        x = torch.rand(1, int(image["num_channels"]), *spatial, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = net(x)
            for path in [exported] + [p for p in [bundle / "models" / "model.ts"] if p.is_file()]:
                if not torch.allclose(torch.jit.load(str(path))(x), expected, atol=1e-5):
                    raise ValueError(f"{bundle.name}: {path.name} does not reproduce the network of model.pt.")


def _workflow(bundle: Path, overrides: Mapping[str, Any]) -> Any:
    from monai.bundle import ConfigWorkflow

    meta, config = _files(bundle)
    return ConfigWorkflow(
        config_file=str(config),
        meta_file=str(meta),
        logging_file=False,
        workflow_type="infer",
        **{"bundle_root": str(bundle), **dict(overrides)},
    )


def check_infer_properties(bundle: str | Path) -> None:
    """``ConfigWorkflow(workflow_type="infer")``: ``initialize`` then ``check_properties`` finds nothing missing.

    Raises:
        ValueError: listing the missing or wrongly referenced properties.
    """
    workflow = _workflow(Path(bundle), {})
    workflow.initialize()
    missing = workflow.check_properties()
    if missing:
        raise ValueError(f"{Path(bundle).name}: inference.json lacks the InferProperties {missing}.")


def check_workflow(bundle: str | Path, overrides: Mapping[str, Any]) -> None:
    """What the zoo's unit tests do: ``initialize``, ``check_properties``, ``run`` and ``finalize`` of the inference
    workflow with small ``overrides`` (the data and outputs in a temporary folder).

    Raises:
        ValueError: if properties are missing.
    """
    workflow = _workflow(Path(bundle), overrides)
    workflow.initialize()
    missing = workflow.check_properties()
    if missing:
        raise ValueError(f"{Path(bundle).name}: inference.json lacks the InferProperties {missing}.")
    workflow.run()
    workflow.finalize()


def _format_commands(json_files: list[str], text_files: list[str]) -> dict[str, list[str]]:
    """The zoo's code-format commands, run from the root of a zoo-like folder holding ``models/``."""
    from monai_tta.zoo.style import BLACK_ARGS, FLAKE8_ARGS, ISORT_ARGS

    py, hooks = [sys.executable, "-m"], "pre_commit_hooks."
    return {
        "black": [*py, "black", "--check", "--quiet", *BLACK_ARGS, "models"],
        "isort": [*py, "isort", "--check-only", "--settings-path", ".", *ISORT_ARGS, "models"],
        "flake8": [*py, "flake8", "--isolated", *FLAKE8_ARGS, "models"],
        "pretty-format-json": [*py, hooks + "pretty_format_json", "--no-sort-keys", "--indent=4", *json_files],
        "trailing-whitespace": [*py, hooks + "trailing_whitespace_fixer", *text_files],
        "end-of-file-fixer": [*py, hooks + "end_of_file_fixer", *text_files],
        "mixed-line-ending": [*py, hooks + "mixed_line_ending", "--fix=no", *text_files],
    }


def check_code_format(bundle: str | Path) -> dict[str, str]:
    """The zoo's code-format checks (black, isort, flake8 and the text pre-commit hooks, with the zoo's settings of
    :mod:`monai_tta.zoo.style`), run on a copy of ``bundle`` at ``models/<name>/`` of a temporary folder (the layout of
    the zoo's repository; the hooks that fix files fix only the copy).

    Returns:
        ``{tool: "pass" or "fail: <its output>"}``; a tool that is not installed fails.
    """
    bundle = Path(bundle)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(bundle, Path(tmp) / "models" / bundle.name, ignore=shutil.ignore_patterns("__pycache__"))
        texts = [
            p.relative_to(tmp).as_posix()
            for p in sorted((Path(tmp) / "models").rglob("*"))
            if p.is_file() and p.suffix in (".py", ".json", ".md", ".yml", ".yaml", ".conf", ".txt", "")
        ]
        for tool, command in _format_commands([f for f in texts if f.endswith(".json")], texts).items():
            done = subprocess.run(command, cwd=tmp, capture_output=True, text=True)
            output = (done.stdout + done.stderr).strip()
            results[tool] = "pass" if done.returncode == 0 else f"fail: {output[:2000]}"
    return results


#: the checks of :func:`run_checks`, by name (the workflow check needs overrides and is run separately).
ZOO_CHECKS: dict[str, Callable[[str | Path], None]] = {
    "schema": check_schema,
    "verify_bundle min": check_min_mode,
    "verify_net_in_out": check_net_in_out,
    "ckpt_export": check_torchscript,
    "infer properties": check_infer_properties,
}


def run_checks(bundle: str | Path, workflow_overrides: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Run every zoo check on ``bundle`` and say ``"pass"`` or ``"fail: <reason>"`` for each; a check that writes
    into the bundle folder fails.

    Args:
        bundle: the bundle folder (an export: ``models/model.pt`` is needed by the min mode and TorchScript checks).
        workflow_overrides: overrides of the ``ConfigWorkflow`` run (``None`` skips that check).
    """
    checks: dict[str, Callable[[], None]] = {name: (lambda f=f: f(bundle)) for name, f in ZOO_CHECKS.items()}
    if workflow_overrides is not None:
        checks["ConfigWorkflow run"] = lambda: check_workflow(bundle, workflow_overrides)
    results = {}
    for name, check in checks.items():
        before = snapshot(bundle)
        try:
            with bundle_on_path(bundle):
                check()
            after = snapshot(bundle)
            written = sorted(set(after.items()) ^ set(before.items()))
            results[name] = f"fail: wrote {sorted({k for k, _ in written})} into the bundle" if written else "pass"
        except Exception as e:  # noqa: BLE001 - a report of every check, whatever it raised
            results[name] = f"fail: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return results
