"""Per-case metrics against brute-force values, and the per-domain summaries."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_hausdorff_distance

from monai_tta.metrics import EMPTY_ASD, EMPTY_HD95, asd_per_channel, dice_per_channel, hd95_per_channel
from monai_tta.reports import (
    bootstrap_ci,
    format_cell,
    format_interval,
    format_number,
    markdown_table,
    plot_cost_ratios,
    plot_day_night,
    plot_stream_dice,
    ratio,
    read_case_csv,
    summarize,
    write_case_csv,
)


def square(r0, r1, c0, c1, size=16):
    m = torch.zeros(1, size, size)
    m[0, r0:r1, c0:c1] = 1
    return m


def brute_asd(pred, label):
    """Mean distance from each border pixel of pred to the nearest border pixel of label (4-neighbour erosion)."""

    def border(m):
        m = np.pad(m.astype(bool), 1)
        inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
        return np.argwhere(m[1:-1, 1:-1] & ~inner)

    bp, bl = border(pred), border(label)
    d = np.sqrt(((bp[:, None, :] - bl[None, :, :]) ** 2).sum(-1))
    return float(d.min(1).mean())


def test_dice_by_hand_and_empty_cases():
    p, y = square(4, 10, 4, 10), square(5, 11, 4, 10)
    assert dice_per_channel(p, y) == pytest.approx([2 * 30 / 72 * 100])
    empty = torch.zeros(1, 16, 16)
    assert dice_per_channel(empty, empty) == pytest.approx([100.0])
    assert dice_per_channel(empty, y) == pytest.approx([1e-6 / 36 * 100])  # the reference smoothing
    with pytest.raises(ValueError, match="shape"):
        dice_per_channel(p, torch.zeros(2, 16, 16))


def test_asd_matches_brute_force_and_is_directional():
    p, y = square(3, 9, 3, 9), square(5, 13, 4, 12)
    assert asd_per_channel(p, y)[0] == pytest.approx(brute_asd(p[0].numpy(), y[0].numpy()))
    assert asd_per_channel(y, p)[0] == pytest.approx(brute_asd(y[0].numpy(), p[0].numpy()))
    assert asd_per_channel(p, y)[0] != pytest.approx(asd_per_channel(y, p)[0])
    assert asd_per_channel(torch.zeros(1, 16, 16), y) == [EMPTY_ASD]
    assert asd_per_channel(torch.ones(1, 16, 16), y) == [EMPTY_ASD]


def test_hd95_by_hand_with_spacing_and_as_monai():
    p, y = torch.zeros(1, 6, 6, 10), torch.zeros(1, 6, 6, 10)
    p[0, 2:4, 2:4, 2:4] = 1  # every voxel of a 2x2x2 cube is on its surface
    y[0, 2:4, 2:4, 6:8] = 1  # the same cube 4 voxels further along the last axis: distances 3 (x4) and 4 (x4)
    assert hd95_per_channel(p, y) == pytest.approx([4.0])  # linear quantile of [3,3,3,3,4,4,4,4] at 0.95
    assert hd95_per_channel(p, y, spacing=(1.0, 1.0, 2.5)) == pytest.approx([10.0])
    assert hd95_per_channel(torch.zeros_like(p), y) == [EMPTY_HD95]
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(2, 9, 10, 11, generator=g) > 0.6).float()
    b = (torch.rand(2, 9, 10, 11, generator=g) > 0.6).float()
    expected = compute_hausdorff_distance(a[None], b[None], include_background=True, percentile=95, spacing=(1, 2, 3))
    assert hd95_per_channel(a, b, spacing=(1, 2, 3)) == pytest.approx(expected[0].tolist())


def test_summary_table_and_csv_roundtrip(tmp_path):
    rows = [
        {"case_id": "a", "domain": "d1", "method": "m", "dice_mean": 80.0},
        {"case_id": "b", "domain": "d1", "method": "m", "dice_mean": 60.0},
        {"case_id": "c", "domain": "d2", "method": "m", "dice_mean": 90.0},
    ]
    s = summarize(rows)
    assert s["d1"]["dice_mean"] == 70.0 and s["d1"]["n"] == 2
    assert s["overall"]["dice_mean"] == 80.0 and s["overall"]["n"] == 3  # mean over domains, not over cases
    write_case_csv(tmp_path / "cases.csv", rows)
    assert read_case_csv(tmp_path / "cases.csv") == rows
    table = markdown_table(s, ["dice_mean", "asd_mean"], row_title="domain")
    assert "| d1 | 70.00 | - |" in table.splitlines()
    lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0])
    assert 1.0 <= lo < 2.5 < hi <= 4.0
    assert bootstrap_ci([5.0, 5.0]) == (5.0, 5.0)


def test_table_cells_headers_and_ratio():
    assert [format_number(v, 1) for v in (1.25, 3, None, "x", math.nan, math.inf, True)] == ["1.2", "3.0"] + ["-"] * 5
    assert [format_cell(v) for v in (None, math.nan, 12, "0-1", 0.5, 0.001, 0.0)] == [
        "-", "-", "12", "0-1", "0.50", "1.00e-03", "0.00"
    ]  # fmt: skip
    assert format_interval(80.0, 75.55, None) == "80.0 [75.5, -]"
    assert ratio(6.0, 2.0) == 3.0 and math.isnan(ratio(1.0, 0.0)) and math.isnan(ratio(1.0, None))
    table = {"a": {"x": "1.0", "y": "text"}, "b": {"x": "2.0"}}
    text = markdown_table(table, ["x", "y"], row_title="m", formatter=str, headers=["x", "x"])
    assert text.splitlines() == ["| m | x | x |", "|---|---|---|", "| a | 1.0 | text |", "| b | 2.0 | - |"]
    with pytest.raises(ValueError, match="one per column"):
        markdown_table(table, ["x", "y"], headers=["x"])


def test_plots_write_png(tmp_path):
    costs = {"source_only": {"median_ms": 10.0, "peak_extra_mb": 5.0}, "tent": {"median_ms": 21.0}}
    assert plot_cost_ratios(costs, "source_only", tmp_path / "cost.png").stat().st_size > 0
    day = [(1, 70.0), (2, None)]
    path = plot_day_night(day, [(0, 60.0), (1, 65.0)], {"initial model": {"a": 60.0, "mean": 60.0}}, tmp_path / "d.png")
    assert path.stat().st_size > 0
    rows = [{"method": "m", "dice_mean": 50.0 + i, "domain": "ab"[i // 2], "round": 1, "position": i} for i in range(4)]
    assert plot_stream_dice(rows, tmp_path / "s.png").stat().st_size > 0


def _row_run(tmp_path, handlers_before=()):
    """Three cases through an AdaptiveEvaluator with a CaseReport: c0 and c2 scored, c1 fails to load."""
    from monai.transforms import Activationsd, AsDiscreted, Compose

    from monai_tta.adapters import SourceOnly
    from monai_tta.data import CaseStream, GuardedDataset
    from monai_tta.data.checks import InvalidCaseError
    from monai_tta.engines import AdaptiveEvaluator
    from monai_tta.handlers import CaseMean, CaseReport

    def load(item):
        if item["case_id"] == "c1":
            raise InvalidCaseError("c1", "the image is empty", "check the file")
        return item

    net = torch.nn.Conv2d(1, 1, 1)  # logits = image - 0.5: the prediction is the image's mask
    with torch.no_grad():
        net.weight.fill_(1.0), net.bias.fill_(-0.5)
    image, label = square(4, 10, 4, 10), square(5, 11, 4, 10)  # Dice 2 * 30 / (36 + 36) * 100
    cases = [
        {"image": image, "label": label, "case_id": "c0", "domain": "a"},
        {"image": image, "label": image, "case_id": "c1", "domain": "a"},
        {"image": image, "label": image, "case_id": "c2", "domain": "b"},
    ]
    report = CaseReport(tmp_path, "M", channel_names=["x"])
    post = Compose([Activationsd("pred", sigmoid=True), AsDiscreted("pred", threshold=0.5)])
    evaluator = AdaptiveEvaluator(
        "cpu",
        CaseStream(GuardedDataset(cases, load)),
        net,
        SourceOnly(setting="domain"),
        postprocessing=post,
        key_val_metric={"mean_dice": CaseMean(report)},
        val_handlers=[*handlers_before, report],
    )
    evaluator.run()
    return evaluator, report


def test_case_report_writes_one_row_per_case_with_hand_computed_dice_and_failures(tmp_path):
    from monai_tta.reports import read_case_csv

    evaluator, report = _row_run(tmp_path)
    assert [r["case_id"] for r in report.rows] == ["c0", "c1", "c2"]
    c0, c1, c2 = report.rows
    assert c0["status"] == "ok" and c0["dice_x"] == pytest.approx(2 * 30 / 72 * 100) == c0["dice_mean"]
    assert c2["dice_mean"] == pytest.approx(100.0) and c0["asd_x"] == pytest.approx(brute_asd(
        square(4, 10, 4, 10)[0].numpy(), square(5, 11, 4, 10)[0].numpy()))  # fmt: skip
    assert c1 == {"case_id": "c1", "domain": "a", "method": "M", "status": "failed",
                  "error": "the image is empty; check the file"}  # fmt: skip
    assert c2["reset"] == 1.0 and all(type(c0[k]) is float for k in ("reset", "n_params", "dice_x"))
    # the key metric is the rows' mean Dice over the scored cases, not a second computation
    assert evaluator.state.metrics["mean_dice"] == pytest.approx((2 * 30 / 72 * 100 + 100.0) / 2)
    assert evaluator.state.case_metrics["dice_mean"] == pytest.approx(100.0)
    assert [r["status"] for r in read_case_csv(tmp_path / "cases.csv")] == ["ok", "failed", "ok"]


def test_case_report_rows_do_not_depend_on_handler_order(tmp_path):
    from monai_tta.reports import read_case_csv

    class Early:
        def __init__(self):
            self.seen = []

        def attach(self, engine):
            from ignite.engine import Events

            engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: self.seen.append(e.state.case_metrics))

    early = Early()
    _, report = _row_run(tmp_path, handlers_before=[early])
    assert [m.get("dice_mean") for m in early.seen] == [pytest.approx(2 * 30 / 72 * 100), None, pytest.approx(100.0)]
    assert len(read_case_csv(tmp_path / "cases.csv")) == 3 == len(report.rows)


def test_case_report_counts_refusals_and_update_only_cases_per_domain(tmp_path, monkeypatch, caplog):
    """The summary counts, per domain, the cases predicted by the source model (``n_fallback``) and those where safe's
    step rule kept only the update (``n_update_only``); a domain where either holds for most cases gets one warning."""
    import logging

    from ignite.engine import Engine, Events

    from monai_tta import distributed
    from monai_tta.handlers import CaseReport

    report = CaseReport(tmp_path, "M", expected_cases=lambda: 4, compute_asd=False, plots=False)
    engine = Engine(lambda engine, batch: None)
    report.attach(engine)
    base = {"method": "M", "status": "ok", "dice_disc": 1.0, "dice_cup": 1.0, "dice_mean": 1.0}
    flags = [("A", 1.0, 0.0), ("A", 0.0, 1.0), ("B", 0.0, 1.0), ("B", 0.0, 1.0)]  # (domain, safe_source, safe_step)
    rows = [
        {**base, "case_id": f"c{i}", "domain": d, "safe_source": src, "safe_step": step}
        for i, (d, src, step) in enumerate(flags)
    ]
    # two ranks' rows (the merge path of a sharded run, as in test_distributed)
    monkeypatch.setattr(distributed, "gather_objects", lambda obj: [([0, 1], rows[:2]), ([2, 3], rows[2:])])
    with caplog.at_level(logging.WARNING):
        engine.fire_event(Events.COMPLETED)
    summary = json.loads((tmp_path / "summary.json").read_text())["M"]
    assert (summary["A"]["n_fallback"], summary["A"]["n_update_only"]) == (1, 1)
    assert (summary["B"]["n_fallback"], summary["B"]["n_update_only"]) == (0, 2)
    assert (summary["overall"]["n_fallback"], summary["overall"]["n_update_only"]) == (1, 3)
    warned = [r.getMessage() for r in caplog.records if "domain 'B'" in r.getMessage()]
    assert len(warned) == 1 and "only the update was kept" in warned[0]
    assert not any("domain 'A'" in r.getMessage() for r in caplog.records)  # 1 of 2: not most cases
