"""The bundle generator merges a family's layers with MONAI's own ConfigParser: the family files are plain MONAI
overlays, and merging them at run time gives the committed bundle's config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from monai_tta.zoo import BundleFamily, find_families, generate_bundle

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
FAMILIES = {f.root.name: f for f in find_families(BUNDLES)}
BUNDLE_NAMES = sorted((name, family) for family, f in FAMILIES.items() for name in f.bundles)


def layer_files(family: BundleFamily, bundle: str, rel: str) -> list[Path]:
    """The family files that make up ``rel`` of ``bundle``, in the order they are laid."""
    return [p for p in (layer / rel for layer in (family.base, *family.bundles[bundle])) if p.is_file()]


@pytest.mark.parametrize("name,family", BUNDLE_NAMES)
def test_merging_the_family_files_at_run_time_gives_the_committed_configs(name, family):
    """``monai.bundle run --config_file [base, layer...]`` on the family files reads what the bundle folder holds."""
    fam = FAMILIES[family]
    inference = layer_files(fam, name, "configs/inference.json")
    committed = BUNDLES / name / "configs"
    assert ConfigParser.load_config_files(inference) == json.loads((committed / "inference.json").read_text())
    evaluate = layer_files(fam, name, "configs/evaluate.json")
    at_run_time = ConfigParser.load_config_files([*inference, *evaluate])
    generated = ConfigParser.load_config_files([committed / "inference.json", committed / "evaluate.json"])
    assert at_run_time == generated


def test_a_layer_uses_monai_keys_and_new_keys_read_top_down(tmp_path):
    root = tmp_path / "families" / "toy"
    files = {
        "family.json": {"bundles": {"toy_bundle": ["layer"]}},
        "base/configs/inference.json": {
            "lr": 1,
            "net": {"_target_": "Net", "ch": [4, 8]},
            "handlers": ["@a"],
            "run": ["$@net"],
        },
        "base/configs/evaluate.json": {"net#ch": [2, 2], "metric": "%configs/inference.json#lr"},
        "layer/configs/inference.json": {"alpha": 0.5, "net#ch#1": 16, "+handlers": ["@b"], "run": ["$@net + 1"]},
        "layer/configs/evaluate.json": {"+net": {"k": 3}},
    }
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(content))
    with pytest.warns(UserWarning, match="Can't merge entry"):  # MONAI's warning: "+net" on an overlay without net
        out = generate_bundle(BundleFamily.load(root), "toy_bundle", tmp_path / "toy_bundle")
    inference = json.loads((out / "configs" / "inference.json").read_text())
    # the new key goes before the layer's next key the base has ("+handlers"); MONAI alone appends it after "run"
    assert list(inference) == ["lr", "net", "alpha", "handlers", "run"]
    assert inference == {
        "lr": 1,
        "net": {"_target_": "Net", "ch": [4, 16]},
        "alpha": 0.5,
        "handlers": ["@a", "@b"],
        "run": ["$@net + 1"],
    }
    assert inference == ConfigParser.load_config_files(
        [root / "base/configs/inference.json", root / "layer/configs/inference.json"]
    )
    # an overlay's own "#" keys and "%" macros are kept as written; "+" on a key it does not have copies the value
    evaluate = json.loads((out / "configs" / "evaluate.json").read_text())
    assert evaluate == {"net#ch": [2, 2], "metric": "%configs/inference.json#lr", "net": {"k": 3}}


def test_a_layer_key_without_a_parent_names_the_file_and_the_key(tmp_path):
    root = tmp_path / "families" / "toy"
    for rel, content in {
        "family.json": {"bundles": {"toy_bundle": ["layer"]}},
        "base/configs/inference.json": {"method": "M"},
        "layer/configs/inference.json": {"inferer#lr": 3},
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(content))
    with pytest.raises(KeyError, match=r"layer/configs/inference.json: override 'inferer#lr'"):
        BundleFamily.load(root).files("toy_bundle")
