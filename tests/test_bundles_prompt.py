"""The VPTTA and DyNA bundles end to end on tiny generated data: reports, protocol, held-out split, resume."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from tiny import tiny_bundle_overrides

from monai_tta.adapters import VPTTA
from monai_tta.data import FUNDUS_DOMAINS, load_datalist
from monai_tta.metrics import dice_per_channel
from monai_tta.reports import read_case_csv
from monai_tta.zoo.run import run_bundle

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
GRATA = BUNDLES / "grata_fundus_segmentation"
VPTTA_BUNDLE = BUNDLES / "vptta_fundus_segmentation"
DYNA_BUNDLE = BUNDLES / "dyna_fundus_segmentation"
DOMAINS = ["camera", "dim"]
PER_DOMAIN = 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Overrides for a tiny run: 2 target domains x 3 cases at 32x32, 1 source epoch, all outputs in a tmp folder."""
    return tiny_bundle_overrides(tmp_path_factory.mktemp("prompt_bundles"), tuple(DOMAINS), PER_DOMAIN)


def dyna_overrides(tiny: dict, out: Path) -> dict:
    """DyNA on the tiny data: the last case of each domain held out, 2 days of 2 images, nights of 2 iterations."""
    return {
        **tiny,
        "output_dir": str(out),
        "heldout_per_domain": 1,
        "images_per_day": 2,
        "night_epochs": 2,
        "night_batch_size": 1,
        "checkpoint_interval": 1,
    }


@pytest.fixture(scope="module")
def vptta_run(tiny):
    # the published protocol's updates on every case: the safeguard (on by default) falls back to the source model on
    # these tiny 1-epoch cases, where the adapted predictions are not clearly more confident than the source's
    overrides = {**tiny, "inferer#safeguard": False}
    workflow = run_bundle(VPTTA_BUNDLE, ["inference.json", "evaluate.json"], overrides, logging_file=False)
    return workflow, read_case_csv(Path(tiny["output_dir"]) / "VPTTA" / "cases.csv")


@pytest.fixture(scope="module")
def dyna_run(tiny, vptta_run, tmp_path_factory):
    """An uninterrupted DyNA run (after the VPTTA run, so the source model exists)."""
    out = tmp_path_factory.mktemp("dyna_uninterrupted")
    configs = ["inference.json", "daynight.json"]
    workflow = run_bundle(DYNA_BUNDLE, configs, dyna_overrides(tiny, out), logging_file=False)
    return workflow, out / "DyNA"


def source_network(tiny: dict, workflow) -> torch.nn.Module:
    """A fresh copy of the bundle's network carrying the source weights."""
    net = workflow.parser.get_parsed_content("network_def", instantiate=True, lazy=False)
    net.load_state_dict(torch.load(tiny["source_checkpoint"], weights_only=True))
    return net.eval()


# ----------------------------------------------------------------------------- VPTTA
@pytest.mark.integration
def test_vptta_bundle_runs_the_published_protocol_and_reports(tiny, vptta_run):
    workflow, rows = vptta_run
    out = Path(tiny["output_dir"]) / "VPTTA"
    assert [r["domain"] for r in rows] == ["camera"] * PER_DOMAIN + ["dim"] * PER_DOMAIN
    assert {r["method"] for r in rows} == {"VPTTA"}
    # one continual run: no reset at the domain change, warm-up counter t = 1..6, the bank grows by one per case
    assert [r["reset"] for r in rows] == [0.0] * 6
    assert [r["step"] for r in rows] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert [r["memory_size"] for r in rows] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    for t, r in enumerate(rows, start=1):
        assert r["warmup_lambda"] == pytest.approx(1.0 / (math.sqrt(t) / 5.0 + 1.0), abs=1e-12)
        assert r["lr"] == pytest.approx(0.05) and r["n_params"] == 3.0  # a 1x1 prompt per channel at 32x32
    # the reports of the GraTa bundle
    summary = json.loads((out / "summary.json").read_text())["VPTTA"]
    assert set(summary) == {"camera", "dim", "overall"} and summary["camera"]["n"] == PER_DOMAIN
    for d in DOMAINS:
        expected = sum(r["dice_mean"] for r in rows if r["domain"] == d) / PER_DOMAIN
        assert summary[d]["dice_mean"] == pytest.approx(expected)
    assert (out / "summary.md").is_file() and (out / "dice_per_domain.png").is_file()
    inferer = workflow.parser.get_parsed_content("inferer")
    assert inferer.prompt_kwargs["image_size"] == 32 and inferer.betas == (0.9, 0.99)


@pytest.mark.integration
def test_vptta_bundle_matches_a_plain_vptta_loop(tiny, vptta_run):
    """The bundle's losses and Dice equal an adapter built here with the published settings and the bundle's ``safe``
    choice, run case by case and told each case's domain (as the bundle's evaluator does)."""
    workflow, rows = vptta_run
    net = source_network(tiny, workflow)
    adapter = VPTTA(
        image_size=32,
        lr=0.05,
        betas=(0.9, 0.99),
        memory_size=40,
        neighbors=16,
        temperature=0.2,
        safe="case",
        safeguard=False,
    )
    preprocessing = workflow.parser.get_parsed_content("labelled_preprocessing")
    datalist = load_datalist(Path(tiny["dataset_dir"]) / "datalist.json", sections=DOMAINS)
    cases = [(d, preprocessing(c)) for d in DOMAINS for c in datalist[d]]
    assert [str(c["case_id"]) for _, c in cases] == [r["case_id"] for r in rows]
    for (domain, case), row in zip(cases, rows):
        adapter.set_domain(domain)
        logits = adapter(case["image"][None], net)
        assert adapter.last_stats["loss"] == pytest.approx(row["loss"], rel=1e-5, abs=1e-7)
        dice = dice_per_channel(torch.sigmoid(logits[0]) >= 0.5, case["label"])
        assert sum(dice) / 2 == pytest.approx(row["dice_mean"], abs=1e-4)


@pytest.mark.integration
def test_vptta_resunet34_override_reads_the_fundus_benchmark_layout(tiny, vptta_run, tmp_path):
    """The published-setting override builds the stream of the four target domains of a source from CSVs (run here
    with the small network and 32x32 images instead of ResUNet-34 at 512x512)."""
    generated = load_datalist(Path(tiny["dataset_dir"]) / "datalist.json", sections=DOMAINS)
    cases = [c for d in DOMAINS for c in generated[d]]
    for i, domain in enumerate(FUNDUS_DOMAINS):  # one case per domain, each domain in a single <domain>.csv
        with open(tmp_path / f"{domain}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "mask"])
            writer.writerow([cases[i]["image"], cases[i]["label"]])
    overrides = {k: v for k, v in tiny.items() if k != "target_domains"}  # the override derives them from the source
    overrides.update(dataset_dir=str(tmp_path), output_dir=str(tmp_path / "eval"), train_if_missing=False)
    configs = ["inference.json", "evaluate.json", "fundus_benchmark.json"]
    run_bundle(VPTTA_BUNDLE, configs, {**overrides, "source_domain": "ORIGA"}, logging_file=False)
    rows = read_case_csv(tmp_path / "eval" / "VPTTA" / "cases.csv")
    assert [r["domain"] for r in rows] == ["RIM_ONE_r3", "REFUGE", "REFUGE_Valid", "Drishti_GS"]
    assert [r["reset"] for r in rows] == [0.0] * 4


# ----------------------------------------------------------------------------- DyNA
@pytest.mark.integration
def test_dyna_bundle_reports_days_nights_and_heldout_per_domain(tiny, dyna_run):
    workflow, out = dyna_run
    report = json.loads((out / "report.json").read_text())
    assert (report["n_images"], report["n_days"], report["n_nights"]) == (4, 2, 2)
    days = report["days"]
    assert [(d["start"], d["end"]) for d in days] == [(0, 2), (2, 4)]
    assert [d["night_iterations"] for d in days] == [4, 4]  # 2 epochs of 2 single-image batches
    # the stream is the first 2 cases of each domain, the held-out slice the last one
    assert [list(d["day_dice_per_group"]) for d in days] == [["camera"], ["dim"]]
    assert all(set(d["heldout_dice_per_group"]) == set(DOMAINS) for d in days)
    assert report["final_heldout_dice_per_group"] == days[-1]["heldout_dice_per_group"]
    # the initial held-out Dice is the source model on the last case of each domain, computed here
    net = source_network(tiny, workflow)
    preprocessing = workflow.parser.get_parsed_content("labelled_preprocessing")
    datalist = load_datalist(Path(tiny["dataset_dir"]) / "datalist.json", sections=DOMAINS)
    for d in DOMAINS:
        case = preprocessing(datalist[d][-1])
        with torch.no_grad():
            pred = (torch.sigmoid(net(case["image"][None])) >= 0.5)[0].float()
        label = case["label"].float()
        dice = [
            1.0 if p.sum() + y.sum() == 0 else float(2 * (p * y).sum() / (p.sum() + y.sum()))
            for p, y in zip(pred, label)
        ]
        assert report["initial_heldout_dice_per_group"][d] == pytest.approx(sum(dice) / 2, abs=1e-6)
    initial = report["initial_heldout_dice_per_group"]
    assert report["initial_heldout_dice"] == pytest.approx(sum(initial.values()) / 2)
    # Markdown tables and plot next to the JSON
    text = (out / "report.md").read_text()
    for line in ("| day 1 | 0-1 |", "| day 2 | 2-3 |", "| initial model |", "| after night 2 |", "| whole stream |"):
        assert line in text
    assert (out / "report.png").stat().st_size > 0
    assert sorted(p.name for p in (out / "day_store" / "items").iterdir()) == [f"{i:08d}.pt" for i in range(4)]


@pytest.mark.integration
def test_dyna_bundle_resumes_after_an_interruption(tiny, dyna_run, tmp_path):
    """A run stopped after its first night's intra-night checkpoint, then the same command again: the same report."""
    _, reference = dyna_run
    overrides = dyna_overrides(tiny, tmp_path)

    def crash(event, info):
        if event == "night_checkpoint" and info == {"day": 1, "iteration": 2}:
            raise RuntimeError("simulated interruption")

    with pytest.raises(RuntimeError) as info:  # MONAI wraps the exception of a config expression
        configs = ["inference.json", "daynight.json"]
        run_bundle(DYNA_BUNDLE, configs, {**overrides, "runner#callback": crash}, logging_file=False)
    causes, error = [], info.value
    while error is not None:
        causes.append(str(error))
        error = error.__cause__
    assert causes[-1] == "simulated interruption"
    ckpt = torch.load(tmp_path / "DyNA" / "checkpoint.pt", weights_only=True)
    assert (ckpt["phase"], ckpt["day"], ckpt["night_iteration"]) == ("night", 1, 2)
    assert not (tmp_path / "DyNA" / "report.json").exists()
    run_bundle(DYNA_BUNDLE, ["inference.json", "daynight.json"], overrides, logging_file=False)
    resumed = json.loads((tmp_path / "DyNA" / "report.json").read_text())
    expected = json.loads((reference / "report.json").read_text())
    assert resumed.keys() == expected.keys() and resumed["n_nights"] == 2
    assert _close(resumed, expected)


def _close(a, b, tol: float = 1e-6) -> bool:
    """Recursive comparison of two JSON values with a tolerance on floats."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, (int, float)):
        return abs(a - b) <= tol
    return a == b


def test_metadata_license_and_readme():
    required = {"schema", "version", "changelog", "monai_version", "pytorch_version", "numpy_version"}
    required |= {"required_packages_version", "task", "description", "authors", "copyright", "network_data_format"}
    for bundle in ("vptta_fundus_segmentation", "dyna_fundus_segmentation"):
        meta = json.loads((BUNDLES / bundle / "configs" / "metadata.json").read_text())
        assert required <= set(meta), bundle
        assert meta["version"] in meta["changelog"]
        assert (BUNDLES / bundle / "LICENSE").read_text().startswith((GRATA / "LICENSE").read_text()[:200])
        assert (BUNDLES / bundle / "docs" / "README.md").is_file()
