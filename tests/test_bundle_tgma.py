"""The TGMA bundle end to end on tiny generated MR sites: source training per site, leave one site out, reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import digest, tiny_tgma_overrides

from monai_tta.reports import read_case_csv
from monai_tta.zoo.run import run_bundle

pytestmark = pytest.mark.integration  # bundle runs (see pyproject's markers)

ROOT = Path(__file__).resolve().parents[1]
TGMA = ROOT / "bundles" / "tgma_prostate_mr_segmentation"
SITES = ["source", "thick", "bias"]


def test_leave_one_site_out_from_source_training_to_the_report(tmp_path):
    overrides = tiny_tgma_overrides(tmp_path, SITES)
    run_bundle(TGMA, ["adapt.json"], overrides, logging_file=False)
    models = {s: tmp_path / "models" / f"{s}.pt" for s in SITES}
    assert all(p.is_file() for p in models.values())
    digests = {s: digest(p) for s, p in models.items()}
    out = tmp_path / "eval"
    loso = json.loads((out / "loso.json").read_text())
    assert list(loso) == [*SITES, "mean"]
    assert (out / "loso.md").is_file() and (out / "loso.png").is_file()
    for site in SITES:
        report = json.loads((out / site / "report.json").read_text())
        others = [s for s in SITES if s != site]
        assert list(report["summary"]["source_dice"]) == others
        assert len(report["selection"]["names"]) == 2 and set(report["selection"]["names"]) == set(others)
        assert abs(sum(report["selection"]["weights"]) - 1) < 1e-9
        rows = read_case_csv(out / site / "cases.csv")
        assert [r["domain"] for r in rows] == [site] and 0 <= rows[0]["TGMA adapted"] <= 100
        assert (out / site / "report.png").is_file() and (out / site / "report.md").is_file()
    first = (out / "loso.md").read_text()
    # a user's own data set is read through overrides alone: the same folder, now as existing data; nothing is
    # retrained, the finished runs are reused and the sources are never written
    run_bundle(TGMA, ["adapt.json"], {**overrides, "generate_data": False}, logging_file=False)
    assert {s: digest(p) for s, p in models.items()} == digests
    assert (out / "loso.md").read_text() == first
