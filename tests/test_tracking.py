"""Experiment tracking of a bundle run: ``--tracking mlflow`` (local SQLite store) and TensorBoard, read back."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny import tiny_bundle_overrides

from monai_tta.reports import read_case_csv
from monai_tta.zoo.run import run_bundle

pytestmark = pytest.mark.integration  # bundle runs (see pyproject's markers)

GRATA = Path(__file__).resolve().parents[1] / "bundles" / "grata_fundus_segmentation"
PER_CASE = {"dice_mean", "dice_disc", "dice_cup", "loss", "cosine", "lr", "reset"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    overrides = tiny_bundle_overrides(tmp_path_factory.mktemp("tracking"))
    overrides["num_overlays"] = 0
    return overrides


def test_mlflow_logs_every_case_and_the_epoch_metric(tiny):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    out = Path(tiny["output_dir"]) / "mlflow"
    run_bundle(GRATA, ["inference.json", "evaluate.json"], {**tiny, "output_dir": str(out)}, tracking="mlflow")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs(e.experiment_id)]
    assert len(runs) == 1
    run_id = runs[0].info.run_id
    assert PER_CASE | {"mean_dice"} <= set(runs[0].data.metrics)
    rows = read_case_csv(out / "GraTa" / "cases.csv")
    for key in ("dice_mean", "loss", "lr"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert [step for step, _ in history] == list(range(1, len(rows) + 1))
        assert [value for _, value in history] == pytest.approx([row[key] for row in rows])


def test_tensorboard_settings_write_every_case(tiny):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    out = Path(tiny["output_dir"]) / "tensorboard"
    settings = str(GRATA / "configs" / "tracking_tensorboard.json")
    run_bundle(GRATA, ["inference.json", "evaluate.json"], {**tiny, "output_dir": str(out)}, tracking=settings)
    events = accumulator.EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert PER_CASE | {"mean_dice"} <= set(events.Tags()["scalars"])
    rows = read_case_csv(out / "GraTa" / "cases.csv")
    logged = events.Scalars("dice_mean")
    assert [e.step for e in logged] == list(range(1, len(rows) + 1))
    assert [e.value for e in logged] == pytest.approx([row["dice_mean"] for row in rows], rel=1e-6)  # float32
