"""The benchmark runner end to end on a tiny problem, and its summary, cost and target helpers."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from monai_tta import bench
from monai_tta.handlers.case_cost import reset_rss_peak
from monai_tta.reports import stratified_ci


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.integration
def test_runner_end_to_end(tmp_path):
    out = tmp_path / "bench"
    argv = [
        "--dims", "2",
        "--domains", "camera", "dim",
        "--num-per-domain", "2",
        "--num-source", "4",
        "--image-size", "32",
        "--source-epochs", "1",
        "--methods", "source_only", "grata",
        "--out", str(out),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    for name in ("results.md", "results.json", "cases.csv", "stream_dice.png", "time_per_case.png"):
        assert (out / name).is_file(), name
    assert not (out / "timing.csv").exists()  # no separate timing phase: the cost comes from the Dice runs
    for setting in bench.SETTINGS:
        assert (out / f"dice_{setting}.png").is_file()
    # the source model was trained into the cache folder (ignored by git), not into a bundle
    checkpoints = list((out / "cache").glob("source_small_32_*.pt"))
    assert len(checkpoints) == 1
    assert (out / "cache" / ".gitignore").read_text().strip().endswith("*")

    rows = read_rows(out / "cases.csv")
    # 2 methods x (3 one-pass settings + 3 rounds of the stream) x 2 domains x 2 cases
    assert len(rows) == 2 * (3 + 3) * 4
    stream = [r for r in rows if r["setting"] == "stream" and r["method"] == "grata"]
    assert [int(r["round"]) for r in stream] == [1] * 4 + [2] * 4 + [3] * 4
    assert [r["domain"] for r in stream[:4]] == ["camera", "camera", "dim", "dim"]
    assert all(0.0 <= float(r["dice_mean"]) <= 100.0 and float(r["time_ms"]) > 0 for r in rows)
    assert {r["status"] for r in rows} == {"ok"}  # the bundles' CaseReport row, with the benchmark's columns

    results = json.loads((out / "results.json").read_text())
    summary = results["summary"]
    assert set(summary) == set(bench.SETTINGS)
    for setting, methods in summary.items():
        for method, block in methods.items():
            sel = [r for r in rows if r["setting"] == setting and r["method"] == method]
            per_domain = {
                d: np.mean([float(r["dice_mean"]) for r in sel if r["domain"] == d]) for d in ("camera", "dim")
            }
            assert block["camera"]["dice_mean"] == pytest.approx(per_domain["camera"])
            assert block["overall"]["dice_mean"] == pytest.approx(np.mean(list(per_domain.values())))
            assert block["overall"]["dice_lo"] <= block["overall"]["dice_mean"] <= block["overall"]["dice_hi"]
            assert block["overall"]["asd_mean"] == pytest.approx(
                np.mean([np.mean([float(r["asd_mean"]) for r in sel if r["domain"] == d]) for d in ("camera", "dim")])
            )
    assert set(summary["stream"]["grata"]["rounds"]) == {"1", "2", "3"}
    # the first case of a run starts from the source model in every setting: episodic and domain agree on it
    episodic = [r for r in rows if r["setting"] == "episodic" and r["method"] == "grata"]
    domain = [r for r in rows if r["setting"] == "domain" and r["method"] == "grata"]
    assert float(episodic[0]["dice_mean"]) == pytest.approx(float(domain[0]["dice_mean"]))

    timing = results["timing"]
    # the cost per method: the CaseCost figures of its episodic run, the first 2 (warm-up) cases left out
    assert list(timing) == ["source_only", "grata"] and results["meta"]["cost_setting"] == "episodic"
    assert results["meta"]["warmup_cases"] == 2
    for method, t in timing.items():
        # after the warm-up, case 3 is timed and case 2 probed for memory (every other case, from the first)
        sel = [r for r in rows if r["setting"] == "episodic" and r["method"] == method]
        assert [r["peak_extra_mb"] != "" for r in sel] == [True, False, True, False]
        assert t["cases"] == 1 and t["memory_cases"] == 1
        assert (t["median_ms"], t["median_cpu_ms"]) == pytest.approx(
            (float(sel[3]["time_ms"]), float(sel[3]["cpu_ms"]))
        )
        assert t["peak_extra_mb"] == pytest.approx(float(sel[2]["peak_extra_mb"]))
    assert all(r["peak_extra_mb"] == "" for r in rows if r["setting"] != "episodic")
    if reset_rss_peak():  # Linux: the memory probes measured the process's resident set
        assert all(
            t["memory_kind"] == "process_rss" and t["peak_total_mb"] > t["peak_extra_mb"] > 0 for t in timing.values()
        )
    markdown = (out / "results.md").read_text()
    assert "python -m monai_tta.bench --dims 2 --domains camera dim" in markdown
    assert "| source_only | " in markdown and "| camera | dim | overall |" in markdown
    assert any(t["target"].startswith("exact GraTa time") for t in results["targets"])

    # a second run reuses the cached checkpoint instead of training again; without an episodic run the cost is the
    # first setting's
    mtime = checkpoints[0].stat().st_mtime_ns
    again = tmp_path / "again"
    options = ["--settings", "domain", "--methods", "source_only", "--no-memory", "--cudnn-benchmark"]
    bench.main(argv[:-2] + options + ["--cache", str(out / "cache"), "--out", str(again)])
    assert checkpoints[0].stat().st_mtime_ns == mtime
    results = json.loads((again / "results.json").read_text())
    assert results["meta"]["cost_setting"] == "domain" and results["timing"]["source_only"]["median_ms"] > 0
    assert results["timing"]["source_only"]["memory_kind"] == "not measured"


def test_cost_per_method_leaves_out_the_warm_up_cases():
    """Times over the cases after the first ``warmup`` without a memory probe, memory over those with one (the last
    case alone when there are no more); on CUDA a warm-up case's peak memory counts when larger."""
    rows = [{"method": "m", "time_ms": t, "cpu_ms": t / 2} for t in (900.0, 30.0, 10.0, 20.0, 40.0)]
    for row, peak in zip(rows[::2], (50.0, 1.0, 3.0)):  # cases 0, 2, 4 probed for memory
        row.update(peak_extra_mb=peak, peak_total_mb=peak + 100.0, time_ms=row["time_ms"] + 1000.0)
    rows += [{"method": "one", "time_ms": 7.0, "cpu_ms": 7.0, "memory_kind": "process_rss"}]
    cost = bench.cost_per_method(rows, 1, torch.device("cpu"))
    assert cost["m"]["cases"] == 2 and cost["m"]["median_ms"] == 25.0 and cost["m"]["max_ms"] == 30.0
    assert cost["m"]["median_cpu_ms"] == 12.5 and cost["m"]["memory_cases"] == 2 and cost["m"]["peak_extra_mb"] == 2.0
    assert cost["m"]["memory_kind"] == "not measured" and cost["one"]["memory_kind"] == "process_rss"
    assert cost["one"]["cases"] == 1 and cost["one"]["median_ms"] == 7.0 and np.isnan(cost["one"]["peak_extra_mb"])
    assert bench.cost_per_method(rows[:5], 1, torch.device("cuda"))["m"]["peak_total_mb"] == 150.0


def test_summaries_and_stratified_interval():
    rows = []
    for domain, values in (("a", [10.0, 20.0, 30.0]), ("b", [50.0, 70.0])):
        for i, v in enumerate(values):
            row = {"domain": domain, "case_id": f"{domain}{i}", "dice_mean": v, "asd_mean": v / 10, "time_ms": i}
            rows.append({"setting": "domain", "method": "m", **row})
            # a 2-round stream repeating the same images: same means, and the same intervals (images are resampled)
            rows += [{"setting": "stream", "method": "m", "round": k, **row} for k in (1, 2)]
            fired = float(domain == "b" and i == 1)  # the collapse safeguard fired on case b1 of the first round
            rows += [
                {"setting": "stream", "method": "g", "round": k, **row, "safeguard": fired * (k == 1)} for k in (1, 2)
            ]
    summaries = bench.summarize_runs(rows, ["a", "b"])
    guarded = summaries["stream"]["g"]
    assert guarded["overall"]["safeguard_fired"] == 1 and guarded["b"]["safeguard_fired"] == 1
    assert (
        guarded["rounds"]["1"]["overall"]["safeguard_fired"] == 1
        and guarded["rounds"]["2"]["a"]["safeguard_fired"] == 0
    )
    assert "safeguard_fired" not in summaries["stream"]["m"]["overall"]
    summary = summaries["domain"]["m"]
    stream = summaries["stream"]["m"]
    for key in ("dice_mean", "dice_lo", "dice_hi", "asd_mean"):
        assert stream["overall"][key] == pytest.approx(summary["overall"][key])
    assert stream["rounds"]["2"]["b"]["dice_mean"] == pytest.approx(60.0)
    assert summary["a"]["dice_mean"] == pytest.approx(20.0)
    assert summary["b"]["dice_mean"] == pytest.approx(60.0)
    assert summary["overall"]["dice_mean"] == pytest.approx(40.0)  # mean over domains, not over cases (42)
    assert summary["overall"]["asd_mean"] == pytest.approx(4.0)
    assert summary["overall"]["time_ms"] == pytest.approx((1.0 + 0.5) / 2)  # the case report's means
    # each bootstrap mean lies between the smallest and the largest possible mean of domain means
    lo, hi = stratified_ci({"a": [10.0, 20.0, 30.0], "b": [50.0, 70.0]})
    assert (10 + 50) / 2 <= lo <= 40.0 <= hi <= (30 + 70) / 2
    assert stratified_ci({"a": [5.0, 5.0]}) == (5.0, 5.0)


def test_targets():
    timing = {
        "source_only": {"median_ms": 10.0, "peak_extra_mb": 10.0, "peak_total_mb": 100.0},
        "grata": {"median_ms": 90.0, "peak_extra_mb": 40.0, "peak_total_mb": 150.0},
        "grata_approx": {"median_ms": 45.0, "peak_extra_mb": 20.0, "peak_total_mb": 120.0},
    }
    summary = {"domain": {"grata": {"overall": {"dice_mean": 80.0}}, "grata_approx": {"overall": {"dice_mean": 79.7}}}}
    targets = {t["target"]: t for t in bench.check_targets(timing, summary, torch.device("cpu"))}
    assert targets["exact GraTa time / source-only (CPU) <= 9.5"]["measured"] == pytest.approx(9.0)
    assert targets["exact GraTa time / source-only (CPU) <= 9.5"]["met"] is True
    assert targets["approximate GraTa time / source-only (CPU) <= 4"]["met"] is False
    assert targets["Dice(exact GraTa) - Dice(approximate), domain <= 0.5"]["measured"] == pytest.approx(0.3)
    assert targets["grata peak memory (extra) / source-only <= 3"]["met"] is False
    assert targets["grata peak memory (total) / source-only <= 3"]["measured"] == pytest.approx(1.5)


def test_make_adapter_and_arguments():
    assert bench.make_adapter("grata", "stream", 32).setting == "continual"
    assert bench.make_adapter("grata_approx", "episodic", 32).mode == "approximate"
    assert bench.make_adapter("grata_separate", "domain", 32).view_mode == "separate"
    with pytest.raises(ValueError):
        bench.make_adapter("nope", "domain", 32)
    with pytest.raises(ValueError):
        bench.make_adapter("grata", "weekly", 32)
    with pytest.raises(SystemExit):
        bench.parse_args(["--methods", "nope"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--settings", "weekly"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--vol-window", "stride=2"])
    window = bench.parse_args(["--vol-window", "stats_from=tiles", "update_batch_size=1", "roi_size=[8,8,8]"])
    assert window.vol_window == {"stats_from": "tiles", "update_batch_size": 1, "roi_size": [8, 8, 8]}
    args = bench.parse_args([])
    assert args.methods[:5] == ["source_only", "norm_adapt", "tent", "grata", "grata_approx"]
    assert args.settings == list(bench.SETTINGS)


def test_methods_read_their_hyper_parameters_from_the_bundles():
    """A method is its bundle's adapter block: a value of the bundle reaches the adapter, a variant overrides it."""
    tent = json.loads((bench.methods.BUNDLES / "tent_fundus_segmentation/configs/inference.json").read_text())
    vptta = json.loads((bench.methods.BUNDLES / "vptta_fundus_segmentation/configs/inference.json").read_text())
    assert bench.make_adapter("tent", "domain", 32).lr == tent["inferer"]["lr"]
    prompt = bench.make_adapter("vptta", "episodic", 32)
    assert prompt.lr == vptta["inferer"]["lr"] and prompt.memory_size == vptta["inferer"]["memory_size"]
    assert prompt.prompt_kwargs["image_size"] == 32 and prompt.safe is None  # the published method: no safe choice
    assert bench.make_adapter("tent_safe", "domain", 32).safe is not None
    parser = bench.method_parser("grata_approx", "stream", 3, {"inferer#roi_size": [8, 8, 8]})
    assert parser["setting"] == "continual" and parser["adapter#mode"] == "approximate"
    sw = parser.get_parsed_content("inferer")
    assert list(sw.roi_size) == [8, 8, 8] and sw.adapter.mode == "approximate" and sw.adapter.setting == "continual"
    with pytest.raises(ValueError, match="3D"):
        bench.method_parser("vptta", "domain", 3)


@pytest.mark.integration
def test_volume_benchmark_smoke(tmp_path):
    """The 3D benchmark end to end on one tiny site: generated MR volumes, the 3D bundle's configs, one epoch of
    source training, Dice per site, and the cost per volume as ratios to source-only sliding-window inference."""
    out = tmp_path / "bench"
    argv = [
        "--dims", "3",
        "--vol-sites", "thick",
        "--vol-cases", "1",
        "--vol-num-source", "2",
        "--vol-epochs", "1",
        "--vol-methods", "source_only", "tent",
        "--vol-window", "update_batch_size=2",
        "--out", str(out),
    ]  # fmt: skip
    bundle_files = sorted(bench.data.VOLUME_BUNDLE.rglob("*"))
    assert bench.main(argv) == 0
    vol = out / "3d"
    for name in ("results.md", "results.json", "cases.csv", "dice_domain.png", "time_per_case.png"):
        assert (vol / name).is_file(), name
    assert not (out / "results.md").exists()  # --dims 3 alone: no 2D run
    assert len(list((out / "cache").glob("source_mr_train2_e1_s0_*.pt"))) == 1
    assert sorted(bench.data.VOLUME_BUNDLE.rglob("*")) == bundle_files  # nothing written into the bundle
    rows = read_rows(vol / "cases.csv")
    assert [(r["method"], r["domain"], r["setting"]) for r in rows] == [
        ("source_only", "thick", "episodic"),
        ("tent", "thick", "episodic"),
        ("source_only", "thick", "domain"),
        ("tent", "thick", "domain"),
    ]  # the default 3D settings: episodic (the cost's) and domain
    assert all(0.0 <= float(r["dice_mean"]) <= 100.0 for r in rows)
    assert {"dice_peripheral", "dice_transition"} <= set(rows[0])
    results = json.loads((vol / "results.json").read_text())
    assert list(results["timing"]) == ["source_only", "tent"]
    assert results["summary"]["episodic"]["tent"]["thick"]["dice_mean"] == pytest.approx(float(rows[1]["dice_mean"]))
    assert results["summary"]["domain"]["tent"]["thick"]["dice_mean"] == pytest.approx(float(rows[3]["dice_mean"]))
    window = results["meta"]["window"]
    assert window["update_batch_size"] == 2 and window["stats_from"] == "patches" and window["num_patches"] == 4
    targets = {t["target"]: t for t in results["targets"]}
    tent = targets["tent time per volume / source-only sliding window (CPU) <= 2.5"]
    timing = results["timing"]
    assert tent["measured"] == pytest.approx(timing["tent"]["median_ms"] / timing["source_only"]["median_ms"])
    if reset_rss_peak():  # the memory probe ran around the sliding window's call of the volume
        assert timing["tent"]["memory_kind"] == "process_rss" and timing["tent"]["peak_extra_mb"] > 0
    markdown = (vol / "results.md").read_text()
    assert "# TTA benchmark results: 3D volumes" in markdown and "| thick | overall |" in markdown
    # the same volumes from their datalist (--vol-data) with the trained weights: the same Dice
    (checkpoint,) = (out / "cache").glob("source_mr_train2_e1_s0_*.pt")
    datalist = out / "cache" / "mr_sites_s0_train2_test1" / "datalist.json"
    again = ["--dims", "3", "--vol-data", str(datalist), "--vol-sites", "thick", "--vol-checkpoint", str(checkpoint)]
    again += ["--vol-methods", "source_only", "--vol-settings", "episodic", "--out", str(tmp_path / "again")]
    assert bench.main(again) == 0
    (row,) = read_rows(tmp_path / "again" / "3d" / "cases.csv")
    assert float(row["dice_mean"]) == pytest.approx(float(rows[0]["dice_mean"]))
    assert f"the datalist `{datalist}`" in (tmp_path / "again" / "3d" / "results.md").read_text()


def test_volume_data_from_a_datalist(tmp_path):
    """--vol-data: the sites are the datalist's 'domains' with a '<site>_test' section (or --vol-sites); a site
    without one is named in the error."""
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"domains": ["a", "b", "c"], "a_test": [], "b_test": []}))
    args = bench.parse_args(["--vol-data", str(path)])
    assert bench.data._targets_3d(args) == (tmp_path, path, None, ["a", "b"])
    with pytest.raises(ValueError, match=r"\['c'\]"):
        bench.data._targets_3d(bench.parse_args(["--vol-data", str(path), "--vol-sites", "a", "c"]))


def test_volume_source_only_is_monai_sliding_window():
    """The reference of the 3D ratios: source-only through the sliding-window adapter is MONAI's sliding window."""
    from monai.inferers import SlidingWindowInferer
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(3, 1, 2, channels=(4, 8), strides=(2,), norm="batch").eval()
    window = {"roi_size": [16, 16, 8], "sw_batch_size": 2, "overlap": 0.25, "mode": "gaussian"}
    x = torch.randn(1, 1, 20, 18, 10)
    adapter = bench.make_adapter("source_only", "domain", 16, window=window)
    with torch.no_grad():
        expected = SlidingWindowInferer(**window)(x, net)
        assert torch.allclose(adapter(x, net), expected, atol=1e-6)


def test_soak_runs_the_bundles_evaluator_in_blocks(tmp_path):
    """The soak streams through each method's bundle evaluator (continual): one figure per block, RSS recorded."""
    assert bench.main(["--soak", "5", "--soak-block", "2", "--soak-size", "32", "--soak-methods", "source_only",
                       "tent", "--out", str(tmp_path)]) == 0  # fmt: skip
    results = json.loads((tmp_path / "soak.json").read_text())["results"]
    for method in ("source_only", "tent"):
        blocks = results[method]["blocks"]
        assert [b["cases"] for b in blocks] == [2, 4, 5] and all(b["median_ms"] > 0 for b in blocks)
        assert results[method]["nonfinite"] == 0 and results[method]["rss_start_mib"] > 0
    assert "| tent |" in (tmp_path / "soak.md").read_text()
