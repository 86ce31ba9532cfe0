"""Bundle families and the Model Zoo: the committed bundles are the generated ones, and every bundle's zoo export
passes the zoo CI's checks (schema, verify_bundle min mode, verify_net_in_out, ckpt_export, InferProperties, a
ConfigWorkflow run) without writing into the bundle folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from monai_tta.zoo import (
    SCHEMA_FILE,
    SCHEMA_MD5,
    BundleFamily,
    compare_generated,
    export_bundle,
    format_for_zoo,
    merge_config,
    zoo_json_text,
)
from monai_tta.zoo.checks import (
    bundle_on_path,
    check_code_format,
    check_infer_properties,
    check_net_in_out,
    check_schema,
    file_hash,
    run_checks,
    snapshot,
)

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
NAMES = sorted(BundleFamily.load(BUNDLES / "families" / "fundus").bundles)
URL = "https://example.org/zoo"
TGMA = "tgma_prostate_mr_segmentation"


def test_committed_bundles_are_the_generated_ones():
    assert compare_generated(BUNDLES) == [], "run `python -m monai_tta.zoo generate` and commit the result"
    assert NAMES == [
        "dyna_fundus_segmentation",
        "grata_fundus_segmentation",
        "source_only_fundus_segmentation",
        "tent_fundus_segmentation",
        "vptta_fundus_segmentation",
    ]


def test_merge_config_replaces_sets_nested_and_inserts_before_the_next_known_key():
    base = {"a": 1, "inferer": {"setting": "x", "lr": 1}, "method": "M", "list": [{"k": 0}]}
    layer = {"alpha": 2, "inferer": {"lr": 3}, "method#x": None, "list#0#k": 5}
    with pytest.raises(KeyError, match="method#x"):
        merge_config(base, layer)
    merged = merge_config(base, {"alpha": 2, "inferer": {"lr": 3}, "list#0#k": 5, "tail": 1, "inferer#lr": 4})
    assert list(merged) == ["a", "alpha", "inferer", "method", "list", "tail"]
    assert merged["inferer"] == {"lr": 4} and merged["list"] == [{"k": 5}] and base["list"] == [{"k": 0}]


def test_schema_copy_is_the_released_file():
    assert file_hash(SCHEMA_FILE) == SCHEMA_MD5
    assert json.loads(SCHEMA_FILE.read_text())["$schema"].endswith("2019-09/schema")


@pytest.mark.parametrize("name", NAMES)
def test_checking_a_committed_bundle_writes_nothing_into_it(name):
    """Schema, network shapes and the InferProperties check (initialise + check_properties) on the committed folder:
    no data is generated, nothing is trained, no file appears or changes."""
    from monai.bundle import ConfigParser

    bundle = BUNDLES / name
    before = snapshot(bundle)
    with bundle_on_path(bundle):
        check_schema(bundle)
        check_net_in_out(bundle)
        check_infer_properties(bundle)
        for config in sorted((bundle / "configs").glob("*.json")):
            if config.name in ("metadata.json", "tracking_tensorboard.json"):  # the latter: --tracking settings
                continue
            chain = ["inference.json"]  # each config merged after the ones its _desc_ names
            chain += ["resunet34.json"] if config.name in ("train_resunet34.json", "fundus_benchmark.json") else []
            chain += ["evaluate.json", "multi_gpu_inference.json"] if config.name == "multi_gpu_evaluate.json" else []
            chain += ["source_training.json"] if config.name == "train_resunet34.json" else []
            chain += ["daynight.json"] if config.name == "multi_gpu_daynight.json" else []
            parser = ConfigParser()
            parser.read_config([str(bundle / "configs" / c) for c in dict.fromkeys([*chain, config.name])])
            parser.parse()
    assert snapshot(bundle) == before
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["supported_apps"] == {"monai-label": "0.8.5"} and meta["numpy_version"] == "1.26.4"
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {
        "0": "background",
        "1": "optic disc",
        "2": "optic cup",
    }


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Every bundle exported for the zoo; the GraTa export trains a tiny source model, the others ship it."""
    root = tmp_path_factory.mktemp("zoo")
    tiny_training = {"epochs": 1, "image_size": 32, "num_per_domain": 2, "train#handlers#1#_disabled_": True}
    grata = "grata_fundus_segmentation"
    first = export_bundle(BUNDLES / grata, root / grata, None, tiny_training, url=f"{URL}/{grata}")
    out = {"grata_fundus_segmentation": first}
    for name in NAMES:
        if name not in out:
            out[name] = export_bundle(BUNDLES / name, root / name, first / "models" / "model.pt", url=f"{URL}/{name}")
    return root, out


@pytest.mark.integration
def test_export_writes_what_the_zoo_wants(exports):
    _, out = exports
    folder = out["vptta_fundus_segmentation"]
    large = yaml.safe_load((folder / "large_files.yml").read_text())["large_files"]
    assert [item["path"] for item in large] == ["models/model.pt", "models/model.ts"]
    assert all(item["hash_val"] == file_hash(folder / item["path"]) for item in large)
    assert [item["url"] for item in large] == [f"{URL}/vptta_fundus_segmentation/model.{e}" for e in ("pt", "ts")]
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    packages = meta["required_packages_version"]
    # what the copied code and the configs import, plus fire (`python -m monai.bundle run`); monai, torch and numpy
    # have their own fields
    # (PyYAML: the copied monai_tta.zoo.checks reads large_files.yml)
    assert sorted(packages, key=str.lower) == [
        "fire",
        "matplotlib",
        "nibabel",
        "pillow",
        "pytorch-ignite",
        "PyYAML",
        "scipy",
    ]
    assert (folder / "scripts" / "monai_tta" / "zoo" / "source.py").is_file()  # the configs call it
    assert json.loads((folder / "configs" / "inference.json").read_text())["imports"][0] == "$import scripts"
    assert (folder / "scripts" / "monai_tta" / "adapters" / "vptta" / "adapter.py").is_file()
    state = torch.load(folder / "models" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    readme = (folder / "docs" / "README.md").read_text()
    for section in ("Authors", "Tags", "Model Description", "Data", "Performance", "System Configuration"):
        assert f"## **{section}**" in readme or f"### **{section}**" in readme, section


@pytest.mark.integration
@pytest.mark.parametrize("name", NAMES)
def test_zoo_checks_pass_on_the_export(exports, name, tmp_path):
    root, out = exports
    overrides = {
        "dataset_dir": str(tmp_path / "data"),
        "output_dir": str(tmp_path / "eval"),
        "num_per_domain": 1,
        "image_size": 32,
        "target_domains": ["camera"],
        "handlers#0#_disabled_": True,
    }
    results = run_checks(out[name], workflow_overrides=overrides)
    assert results == dict.fromkeys(results, "pass") and len(results) == 6, results
    assert len(list((tmp_path / "eval" / "masks").glob("*.nii.gz"))) == 1


@pytest.mark.integration
@pytest.mark.parametrize("name", NAMES)
def test_export_passes_the_zoos_code_format_checks(exports, name):
    """black, isort, flake8 and the text pre-commit hooks with the zoo's settings, on the export at models/<name>/
    (the whole copied package; the unit tier checks the same rules on a small folder below)."""
    _, out = exports
    tools = ["black", "isort", "flake8", "pretty-format-json", "trailing-whitespace", "end-of-file-fixer"]
    assert check_code_format(out[name]) == dict.fromkeys([*tools, "mixed-line-ending"], "pass")


def test_committed_bundles_fail_pretty_format_json_and_the_export_fixes_it(tmp_path):
    """The repository keeps its compact JSON; the zoo's hook wants json.dumps(indent=4): one element per line.

    The export's formatting (:func:`format_for_zoo`, as ``export_bundle`` runs it) makes a bundle with package files
    under ``scripts/`` pass every code-format check of the zoo."""
    expected = '{\n    "a": [\n        1,\n        2\n    ],\n    "b": "\\u00e9"\n}\n'
    assert zoo_json_text({"a": [1, 2], "b": "é"}) == expected
    assert "pretty-format-json" in {k for k, v in check_code_format(BUNDLES / NAMES[0]).items() if v != "pass"}
    folder = tmp_path / NAMES[0]
    shutil.copytree(BUNDLES / NAMES[0], folder)
    modules = ["zoo/__init__.py", "zoo/source.py", "adapters/tent/__init__.py", "adapters/tent/adapter.py"]
    for module in modules:  # the Tent files are among those black and isort rewrite
        (folder / "scripts" / "monai_tta" / module).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / "monai_tta" / module, folder / "scripts" / "monai_tta" / module)
    changed = {p.relative_to(folder).as_posix() for p in format_for_zoo(folder)}
    assert {"configs/inference.json", "scripts/monai_tta/adapters/tent/adapter.py"} <= changed
    results = check_code_format(folder)
    assert results == dict.fromkeys(results, "pass") and len(results) == 7, results


def test_export_refuses_hosted_files_without_a_url_and_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="--url"):
        export_bundle(BUNDLES / NAMES[0], out, None, url=None)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_failed_export_removes_its_folder(tmp_path, monkeypatch):
    from monai_tta.zoo import export

    monkeypatch.setattr(export, "format_for_zoo", lambda folder: [])  # seconds of black, not what is tested here
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "zoo" / "x"
    with pytest.raises(Exception):  # noqa: B017 - whatever torch raises on a file that is not a checkpoint
        export_bundle(BUNDLES / NAMES[0], out, bad, url=URL)
    assert list((tmp_path / "zoo").iterdir()) == []  # neither the folder nor its temporary twin


@pytest.mark.integration
def test_tgma_exports_its_adapted_target_model_and_serves_it(tmp_path):
    """The TGMA export ships the adapted target model of its offline adaptation (tiny: 3 sites, 2 epochs) as
    models/model.pt; the zoo's checks pass and inference.json runs on the target site's volumes."""
    sites = ["source", "thick", "endorectal"]
    tiny = {"data_sites": sites, "num_train": 3, "num_test": 1, "voxel_scale": 2.0, "pixdim": [4.0, 4.0, 6.0]}
    tiny.update({"slice_size": [16, 16], "source_training#epochs": 1, "tgma#epochs": 2})
    out = export_bundle(BUNDLES / TGMA, tmp_path / TGMA, None, tiny, url=URL)
    assert sorted(p.name for p in (out / "models").iterdir()) == ["model.pt", "model.ts"]
    assert not (out / "eval").exists() and not (out / "data").exists()
    state = torch.load(out / "models" / "model.pt", weights_only=True)
    assert {k.split(".")[0] for k in state} == {"net"} and "net.target.weights" in state  # TGMA guarded (issue 18)
    assert abs(float(state["net.target.weights"].sum()) - 1) < 1e-6  # the normalised DTM weights of the selection
    assert torch.equal(state["net.source.weights"], state["net.target.weights"])  # TGMA before adaptation
    overrides = {"dataset_dir": str(tmp_path / "data"), "output_dir": str(tmp_path / "eval"), **tiny}
    overrides = {k: v for k, v in overrides.items() if "#" not in k}
    results = run_checks(out, workflow_overrides=overrides)
    assert results == dict.fromkeys(results, "pass") and len(results) == 6, results
    (mask,) = (tmp_path / "eval" / "masks").glob("*.nii.gz")
    assert "endorectal" in mask.name
    assert check_code_format(out) == dict.fromkeys(check_code_format(out), "pass")
