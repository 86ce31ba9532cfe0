"""The 3D prostate MR bundle end to end on tiny volumes, its thin variants, a user's own NIfTI data and network by
command-line overrides, and a model-zoo-style config that gets TTA by replacing its inferer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from tiny import MR_SITES as SITES
from tiny import digest, tiny_mr_overrides, write_nifti_sites

from monai_tta.handlers import CaseReport
from monai_tta.reports import read_case_csv
from monai_tta.zoo import BundleFamily
from monai_tta.zoo.checks import (
    bundle_on_path,
    check_infer_properties,
    check_net_in_out,
    check_schema,
    check_torchscript,
    snapshot,
)
from monai_tta.zoo.run import run_bundle

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
MR = BUNDLES / "grata_prostate_mr_segmentation"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_mr_overrides(tmp_path_factory.mktemp("mr"))


@pytest.mark.parametrize("name", sorted(BundleFamily.load(BUNDLES / "families" / "prostate_mr").bundles))
def test_zoo_checks_of_the_committed_bundles_write_nothing_into_them(name):
    bundle = BUNDLES / name
    before = snapshot(bundle)
    with bundle_on_path(bundle):
        check_schema(bundle)
        check_net_in_out(bundle)
        check_infer_properties(bundle)
    assert snapshot(bundle) == before
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    labels = {"0": "background", "1": "peripheral zone", "2": "transition zone"}  # the saved label map's values
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == labels


def test_torchscript_check_runs_the_3d_network_on_a_volume(tmp_path):
    """The zoo's ``ckpt_export`` check on a 3D bundle: a 5D input of the metadata's dimensionality (a 2D one fails)."""
    import shutil

    bundle = tmp_path / MR.name
    shutil.copytree(MR, bundle, ignore=shutil.ignore_patterns("eval", "data", "models"))
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["network_def"].update({"channels": [4, 8, 16, 32], "num_res_units": 1})
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(3, 1, 2, channels=(4, 8, 16, 32), strides=(2, 2, 2), num_res_units=1, norm="batch")
    (bundle / "models").mkdir()
    torch.save(net.state_dict(), bundle / "models" / "model.pt")
    with bundle_on_path(bundle):
        check_torchscript(bundle)


def test_parsing_and_checking_the_config_writes_nothing(tmp_path):
    overrides = tiny_mr_overrides(tmp_path)
    workflow = ConfigWorkflow(
        config_file=str(MR / "configs" / "inference.json"),
        meta_file=str(MR / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        **{"bundle_root": str(MR), **overrides},
    )
    workflow.initialize()
    assert workflow.check_properties() in (None, [])  # builds the dataset, evaluator, inferer and network
    evaluation = ConfigWorkflow(
        config_file=[str(MR / "configs" / f) for f in ("inference.json", "evaluate.json", "source_training.json")],
        logging_file=False,
        workflow_type=None,
        **{"bundle_root": str(MR), **overrides},
    )
    evaluation.initialize()
    evaluation.parser.get_parsed_content("evaluator")
    assert list(tmp_path.iterdir()) == []  # no data generated, no source model trained


@pytest.mark.integration
def test_evaluate_generates_trains_adapts_and_reports_per_site(tiny):
    run_bundle(MR, ["inference.json", "evaluate.json"], tiny, logging_file=False)
    ckpt = Path(tiny["source_checkpoint"])
    assert ckpt.is_file()
    before = digest(ckpt)
    out = Path(tiny["output_dir"]) / "GraTa"
    rows = read_case_csv(out / "cases.csv")
    assert [r["domain"] for r in rows] == ["thick"] * 2 + ["sagittal"] * 2
    assert all(0.0 <= r["dice_mean"] <= 100.0 and r["hd95_mean"] >= 0.0 for r in rows)
    # the same run saved the label maps in each input's grid, where it scored them
    for row in rows:
        site, name = row["domain"], f"{row['case_id']}.nii.gz"
        saved = nib.load(Path(tiny["output_dir"]) / "masks" / name.replace(".nii.gz", "_GraTa.nii.gz"))
        assert saved.shape == nib.load(Path(tiny["dataset_dir"]) / site / "imagesTs" / name).shape
    assert {"dice_peripheral", "dice_transition", "hd95_peripheral", "hd95_transition"} <= set(rows[0])
    assert [r["reset"] for r in rows] == [0, 0, 1, 0]  # reset at the site change only
    assert all(r["n_params"] > 0 for r in rows)
    summary = json.loads((out / "summary.json").read_text())["GraTa"]
    assert set(summary) == {"thick", "sagittal", "overall"}
    assert summary["thick"]["hd95_mean"] == pytest.approx(np.mean([r["hd95_mean"] for r in rows[:2]]))
    assert (out / "dice_per_domain.png").is_file() and "hd95_mean" in (out / "summary.md").read_text()
    assert json.loads((out / "config.json").read_text())["config"]["method"] == "GraTa"  # the run record is this run's
    assert "train" in json.loads((out.parent / "source_training" / "config.json").read_text())["config"]
    run_bundle(MR, ["inference.json", "evaluate.json"], tiny, logging_file=False)
    assert digest(ckpt) == before  # reused, never written again


@pytest.mark.parametrize(
    "bundle,method", [("tent_prostate_mr_segmentation", "TENT"), ("source_only_prostate_mr_segmentation", "SourceOnly")]
)
@pytest.mark.integration
def test_variants_are_the_same_bundle_with_another_adapter(tiny, bundle, method):
    run_bundle(BUNDLES / bundle, ["inference.json", "evaluate.json"], tiny, logging_file=False)
    rows = read_case_csv(Path(tiny["output_dir"]) / method / "cases.csv")
    assert len(rows) == 4 and {r["method"] for r in rows} == {method}
    grata, variant = (json.loads((BUNDLES / b / "configs" / "inference.json").read_text()) for b in (MR.name, bundle))
    assert {k for k in grata if grata[k] != variant.get(k)} == {"adapter", "method"}


@pytest.mark.integration
def test_inference_writes_uint8_label_maps_in_the_input_space(tiny):
    overrides = {**tiny, "output_dir": str(Path(tiny["output_dir"]) / "infer")}
    run_bundle(MR, ["inference.json"], overrides, logging_file=False)
    masks = sorted((Path(overrides["output_dir"]) / "masks").glob("*.nii.gz"))
    assert [m.name for m in masks] == sorted(
        f"{s}_test_{i:03d}_GraTa.nii.gz" for s in ("thick", "sagittal") for i in range(2)
    )
    for mask in masks:
        site = mask.name.split("_")[0]
        image = nib.load(Path(tiny["dataset_dir"]) / site / "imagesTs" / mask.name.replace("_GraTa", ""))
        saved = nib.load(mask)
        assert saved.shape == image.shape  # the input's grid (not the resampled RAS one) ...
        np.testing.assert_allclose(saved.affine, image.affine, atol=1e-4)  # ... and its orientation and spacing
        values = np.asarray(saved.dataobj)
        assert values.dtype == np.uint8 and set(np.unique(values)) <= {0, 1, 2}


GRID = np.stack(np.meshgrid(*[np.arange(n) for n in (20, 20, 16)], indexing="ij"), -1)


def draw_sphere(rng: np.random.Generator, gain: float) -> tuple[np.ndarray, np.ndarray]:
    """A 20x20x16 volume with a bright sphere, and its binary label."""
    centre, radius = rng.uniform(7, 10, 3), rng.uniform(3, 5)
    label = (np.linalg.norm(GRID - centre, axis=-1) < radius).astype(np.uint8)
    return (gain * (100 + 80 * label + rng.normal(0, 10, label.shape))).astype(np.float32), label


def write_own_volumes(root: Path) -> Path:
    """A user's own data set: two sites of 20x20x16 NIfTI volumes (LPS, 1.5 mm) with a sphere labelled 1."""
    return write_nifti_sites(root, draw_sphere, {"siteA": 1.0, "siteB": 0.4}, affine=np.diag([-1.5, -1.5, 1.5, 1.0]))


@pytest.mark.integration
def test_own_nifti_data_and_network_by_command_line_overrides(tmp_path):
    datalist = write_own_volumes(tmp_path)
    network = {  # MONAI's SegResNet at its default GroupNorm: the adapter updates the GroupNorm affine parameters
        "_target_": "SegResNet",
        "spatial_dims": 3,
        "in_channels": "@in_channels",
        "out_channels": "@out_channels",
        "init_filters": 8,
        "blocks_down": [1, 1, 1],
        "blocks_up": [1, 1],
    }
    args = {
        "generate_data": False,
        "datalist_file": str(datalist),
        "target_domains": ["siteB"],
        "out_channels": 1,
        "label_encoding": "binary",
        "channel_names": ["lesion"],
        "pixdim": [1.5, 1.5, 1.5],
        "roi_size": [16, 16, 16],
        "network_def": network,
        "source_checkpoint": str(tmp_path / "my_source.pt"),
        "output_dir": str(tmp_path / "eval"),
        "source_training#epochs": 1,
        "train_if_missing": True,
        "handlers#0#_disabled_": True,
    }
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file"]
    command += [str([str(MR / "configs" / "inference.json"), str(MR / "configs" / "evaluate.json")])]
    command += ["--bundle_root", str(MR), "--logging_file", str(MR / "configs" / "logging.conf")]
    for key, value in args.items():
        command += [f"--{key}", value if isinstance(value, str) else repr(value)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_case_csv(tmp_path / "eval" / "GraTa" / "cases.csv")
    assert len(rows) == 4 and {r["domain"] for r in rows} == {"siteB"}
    assert all(r["n_params"] == 2 * (8 + 8 + 16 + 16 + 32 + 32 + 16 + 16 + 8 + 8 + 8) for r in rows)  # GroupNorm affine
    assert "dice_lesion" in rows[0] and "hd95_lesion" in rows[0] and "dice_transition" not in rows[0]
    state = torch.load(tmp_path / "my_source.pt", weights_only=True)
    assert any(k.startswith("down_layers.") for k in state) and not any(k.startswith("model.") for k in state)


ZOO_STYLE_INFERENCE = {
    "imports": ["$import glob", "$import torch"],
    "bundle_root": ".",
    "output_dir": "$@bundle_root + '/eval'",
    "dataset_dir": "/data",
    "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*_img.nii.gz')))",
    "device": "$torch.device('cpu')",
    "network_def": {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "channels": [4, 8, 16],
        "strides": [2, 2],
        "num_res_units": 1,
        "norm": "batch",
    },
    "network": "$@network_def.to(@device)",
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [2.0, 2.0, 2.0], "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": 0, "a_max": 200, "b_min": 0, "b_max": 1},
            {"_target_": "EnsureTyped", "keys": "image"},
        ],
    },
    "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
    "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [8, 8, 8], "sw_batch_size": 4, "overlap": 0.5},
    "postprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image"},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "print_log": False},
        ],
    },
    "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
    "evaluator": {
        "_target_": "SupervisedEvaluator",
        "device": "@device",
        "val_data_loader": "@dataloader",
        "network": "@network",
        "inferer": "@inferer",
        "postprocessing": "@postprocessing",
        "val_handlers": "@handlers",
    },
    "initialize": ["$monai.utils.set_determinism(seed=123)"],
    "run": ["$@evaluator.run()"],
}


def run_zoo_style(tmp_path: Path, name: str, overrides: dict) -> ConfigWorkflow:
    config = tmp_path / "inference.json"
    config.write_text(json.dumps(ZOO_STYLE_INFERENCE))
    workflow = ConfigWorkflow(
        config_file=str(config),
        logging_file=False,
        workflow_type=None,
        **{"dataset_dir": str(tmp_path), "output_dir": str(tmp_path / name), **overrides},
    )
    workflow.initialize()
    workflow.run()
    return workflow


@pytest.mark.integration
def test_zoo_style_config_gets_tta_when_only_its_inferer_is_replaced(tmp_path):
    write_own_volumes(tmp_path)
    plain = run_zoo_style(tmp_path, "plain", {})
    ours = {
        "_target_": "monai_tta.inferers.SlidingWindowAdapter",
        "adapter": {"_target_": "monai_tta.adapters.Tent", "activation": "softmax", "setting": "episodic"},
        "roi_size": [8, 8, 8],
        "sw_batch_size": 4,
        "overlap": 0.5,
    }
    adapted = run_zoo_style(tmp_path, "adapted", {"inferer": ours})
    plain_net = plain.parser.get_parsed_content("network").state_dict()
    adapted_net = adapted.parser.get_parsed_content("network").state_dict()
    changed = {k for k in plain_net if not torch.equal(plain_net[k], adapted_net[k])}
    assert changed and all(k.endswith(("weight", "bias")) and ".adn.N." in k for k in changed)  # BN affine only
    assert adapted.parser.get_parsed_content("inferer").last_stats["n_params"] > 0
    saved = {
        run: sorted(p.relative_to(tmp_path / run) for p in (tmp_path / run).rglob("*.nii.gz"))
        for run in ("plain", "adapted")
    }
    assert len(saved["plain"]) == 8 and saved["plain"] == saved["adapted"]  # the same outputs, nothing else changed


def test_concurrent_requests_to_the_sliding_window_adapter_each_get_the_sliding_window_plan():
    """MONAI Label calls the bundle's inferer from several request threads on one cached network: with the episodic
    setting every call, whatever runs at the same time, returns what a lone call returns."""
    import threading

    from monai.networks.nets import UNet

    from monai_tta.adapters import Tent
    from monai_tta.inferers import SlidingWindowAdapter

    torch.manual_seed(0)
    network = UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=1, norm="batch").eval()
    inferer = SlidingWindowAdapter(Tent(setting="episodic"), roi_size=(8, 8, 8), sw_batch_size=2, num_patches=2)
    volume = torch.rand(1, 1, 20, 12, 10, generator=torch.Generator().manual_seed(1))
    expected = inferer(volume, network)
    results, errors = [], []

    def request() -> None:
        try:
            for _ in range(3):
                results.append(inferer(volume, network))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=request) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 9
    assert all(torch.equal(r, expected) for r in results)


@pytest.mark.integration
def test_two_torchrun_ranks_score_every_volume_as_one_process(tiny, tmp_path):
    """The 3D bundle's multi_gpu configs under torchrun (2 gloo ranks, domain setting: whole sites, 4 and 2 volumes)."""
    overrides = {**tiny, "target_domains": [*SITES, "bias_test"], "num_overlays": 0}
    single = {**overrides, "output_dir": str(tmp_path / "single")}
    run_bundle(MR, ["inference.json", "evaluate.json"], single, logging_file=False)
    (tmp_path / "overrides.json").write_text(json.dumps(overrides))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
    command += ["tests/sharded_runs.py", MR.name, str(tmp_path / "overrides.json"), str(tmp_path / "sharded"), "domain"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    out = tmp_path / "sharded" / "domain" / "GraTa"
    assert [len(read_case_csv(out / f"cases.rank{r}.csv")) for r in range(2)] == [4, 2]

    def rows(folder: Path) -> list[dict]:  # without reset: a rank's first volume starts from the source unannounced
        return [{k: v for k, v in r.items() if k != "reset"} for r in read_case_csv(folder / "cases.csv")]

    assert len(rows(out)) == 6 and rows(out) == rows(tmp_path / "single" / "GraTa")

    def summary(folder: Path) -> dict:  # per site, every mean but the reset count's
        values = json.loads((folder / "summary.json").read_text())["GraTa"]
        return {site: {k: v for k, v in means.items() if k != "reset"} for site, means in values.items()}

    assert summary(out) == summary(tmp_path / "single" / "GraTa")


@pytest.mark.integration
def test_a_crashed_run_resumes_mid_site_with_the_sliding_window_adapters_state(tiny, tmp_path, monkeypatch):
    """The 3D bundle's RunCheckpoint (its data through CaseStream, the adapter inside SlidingWindowAdapter): a run
    that crashes after the first volume of its second site resumes with that site's adapted state and ends as a run
    that never crashed (rows and key metric)."""
    overrides = dict(tiny)  # the shipped evaluate.json checkpoints after every volume
    configs = ["inference.json", "evaluate.json"]
    whole = run_bundle(MR, configs, {**overrides, "output_dir": str(tmp_path / "whole")}, logging_file=False)
    record = CaseReport.__call__

    def crash_at_the_last(self, engine):  # before the checkpoint of the 4th volume: the 3rd's is the last one
        record(self, engine)
        if len(self.rows) == 4:
            raise RuntimeError("simulated crash")

    crashed = {**overrides, "output_dir": str(tmp_path / "crashed")}
    monkeypatch.setattr(CaseReport, "__call__", crash_at_the_last)
    with pytest.raises(RuntimeError):
        run_bundle(MR, configs, crashed, logging_file=False)
    monkeypatch.setattr(CaseReport, "__call__", record)
    resumed = run_bundle(MR, configs, crashed, logging_file=False)
    assert resumed.parser.get_parsed_content("run_checkpoint").resumed_at == 3
    rows = [read_case_csv(tmp_path / run / "GraTa" / "cases.csv") for run in ("whole", "crashed")]
    assert len(rows[0]) == 4 and rows[1] == rows[0]
    metric = [run.parser.get_parsed_content("evaluator").state.metrics["mean_dice"] for run in (whole, resumed)]
    assert metric[1] == metric[0]
