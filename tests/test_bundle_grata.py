"""The GraTa bundle end to end on tiny generated data, the TENT and source-only bundles, and a user's own NIfTI data."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigWorkflow
from tiny import digest, draw_square, tiny_bundle_overrides, write_nifti_sites

from monai_tta.reports import read_case_csv
from monai_tta.zoo.run import run_bundle

ROOT = Path(__file__).resolve().parents[1]
GRATA = ROOT / "bundles" / "grata_fundus_segmentation"
BUNDLES = ROOT / "bundles"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Overrides for a tiny run: 2 target domains x 3 cases at 32x32, 1 source epoch, all outputs in a tmp folder."""
    return tiny_bundle_overrides(tmp_path_factory.mktemp("grata"))


@pytest.mark.integration
def test_evaluate_trains_source_on_first_use_adapts_and_reports(tiny):
    run_bundle(GRATA, ["inference.json", "evaluate.json"], tiny, logging_file=False)
    ckpt = Path(tiny["source_checkpoint"])
    assert ckpt.is_file()
    before = digest(ckpt)
    rows = read_case_csv(Path(tiny["output_dir"]) / "GraTa" / "cases.csv")
    assert [r["domain"] for r in rows] == ["camera"] * 3 + ["dim"] * 3
    # the same run wrote the label maps, as inference.json writes them: one run, masks and per-case CSV
    masks = sorted((Path(tiny["output_dir"]) / "masks").glob("*_GraTa.nii.gz"))
    assert [m.name for m in masks] == [f"{r['case_id']}_GraTa.nii.gz" for r in rows]
    assert np.asarray(nib.load(masks[0]).dataobj).dtype == np.uint8
    assert all(0.0 <= r["dice_mean"] <= 100.0 for r in rows)
    assert [r["reset"] for r in rows] == [0, 0, 0, 1, 0, 0]  # reset at the domain change only
    assert all(r["n_params"] > 0 and 0.0 <= r["lr"] <= 1e-4 for r in rows)
    summary = json.loads((Path(tiny["output_dir"]) / "GraTa" / "summary.json").read_text())["GraTa"]
    assert set(summary) == {"camera", "dim", "overall"}
    expected = np.mean([r["dice_mean"] for r in rows if r["domain"] == "dim"])
    assert summary["dim"]["dice_mean"] == pytest.approx(expected)
    assert (Path(tiny["output_dir"]) / "GraTa" / "dice_per_domain.png").is_file()
    recorded = json.loads((Path(tiny["output_dir"]) / "GraTa" / "config.json").read_text())
    assert recorded["overrides"]["num_per_domain"] == 3 and recorded["config"]["inferer"]["_target_"].endswith("GraTa")
    assert recorded["config_files"][-1].endswith("evaluate.json")  # the GraTa run, not the source training it started
    training = json.loads((Path(tiny["output_dir"]) / "source_training" / "config.json").read_text())
    assert training["config_files"][-1].endswith("source_training.json")
    # a second run reuses the checkpoint and never writes it
    run_bundle(GRATA, ["inference.json", "evaluate.json"], tiny, logging_file=False)
    assert digest(ckpt) == before


@pytest.mark.parametrize(
    "bundle,method", [("tent_fundus_segmentation", "TENT"), ("source_only_fundus_segmentation", "SourceOnly")]
)
@pytest.mark.integration
def test_standalone_method_bundles_run_on_the_same_source_model(tiny, bundle, method):
    run_bundle(BUNDLES / bundle, ["inference.json", "evaluate.json"], tiny, logging_file=False)
    rows = read_case_csv(Path(tiny["output_dir"]) / method / "cases.csv")
    assert len(rows) == 6 and {r["method"] for r in rows} == {method}
    assert json.loads((BUNDLES / bundle / "configs" / "metadata.json").read_text())["version"]


@pytest.mark.integration
def test_inference_saves_masks_and_has_infer_properties(tiny):
    workflow = ConfigWorkflow(
        config_file=str(GRATA / "configs" / "inference.json"),
        meta_file=str(GRATA / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        **{"bundle_root": str(GRATA), **tiny},
    )
    workflow.initialize()
    assert workflow.check_properties() in (None, [])
    workflow.run()
    workflow.finalize()
    masks = sorted((Path(tiny["output_dir"]) / "masks").glob("*_GraTa.nii.gz"))  # evaluate.json writes them too
    assert len(masks) == 6
    label_map = np.asarray(nib.load(masks[0]).dataobj)
    assert label_map.dtype == np.uint8 and label_map.shape[:2] == (32, 32)
    assert set(np.unique(label_map)) <= {0, 1, 2}  # 0 background, 1 optic disc, 2 optic cup


def test_metadata_is_complete():
    required = {"schema", "version", "changelog", "monai_version", "pytorch_version", "numpy_version"}
    required |= {"required_packages_version", "task", "description", "authors", "copyright", "network_data_format"}
    for bundle in ("grata_fundus_segmentation", "tent_fundus_segmentation", "source_only_fundus_segmentation"):
        meta = json.loads((BUNDLES / bundle / "configs" / "metadata.json").read_text())
        assert required <= set(meta), bundle
        assert meta["version"] in meta["changelog"]
        assert (BUNDLES / bundle / "LICENSE").is_file() and (BUNDLES / bundle / "docs" / "README.md").is_file()


@pytest.mark.integration
def test_own_nifti_data_by_overrides(tmp_path):
    datalist = write_nifti_sites(tmp_path, draw_square, {"siteA": 1.0, "siteB": 0.5})
    overrides = {
        "generate_data": False,
        "datalist_file": str(datalist),
        "target_domains": ["siteB"],
        "in_channels": 1,
        "out_channels": 1,
        "label_encoding": "binary",
        "channel_names": ["lesion"],
        "image_size": 32,
        "image_reader": "NibabelReader",
        "reverse_indexing": True,
        "source_checkpoint": str(tmp_path / "my_source.pt"),
        "output_dir": str(tmp_path / "eval"),
        "source_training#epochs": 1,
        "train_if_missing": True,
        "handlers#0#_disabled_": True,
    }
    run_bundle(GRATA, ["inference.json", "evaluate.json"], overrides, logging_file=False)
    rows = read_case_csv(tmp_path / "eval" / "GraTa" / "cases.csv")
    assert len(rows) == 4 and {r["domain"] for r in rows} == {"siteB"}
    assert "dice_lesion" in rows[0] and "dice_cup" not in rows[0]
