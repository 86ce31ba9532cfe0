"""Progress output where a run is watched, overlay PNGs and stream plots."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from ignite.engine import Engine

from monai_tta.handlers import Progress
from monai_tta.reports import plot_overlay, plot_stream_stats


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_a_few_lines_in_a_log(caplog):
    assert Progress(stream=_Terminal()).resolved_mode() == "bar"
    assert Progress(stream=io.StringIO()).resolved_mode() == "log"
    engine = Engine(lambda e, b: None)
    Progress(desc="adapting", stream=io.StringIO(), every_seconds=3600).attach(engine)
    with caplog.at_level(logging.INFO, logger="monai_tta.progress"):
        engine.run(range(45), max_epochs=1)
    lines = [r.getMessage() for r in caplog.records if r.name == "monai_tta.progress"]
    assert len(lines) == 12  # at 4, 8, ..., 44 cases (a tenth of 45 is 4), and one at the end
    assert lines[0].startswith("adapting: 4/45 cases (9%)") and "cases/s" in lines[0] and "s left" in lines[0]
    assert lines[-1].startswith("adapting: 45/45 cases (100%)")
    with pytest.raises(ValueError):
        Progress(mode="sometimes")


def test_overlays_of_images_and_volumes(tmp_path):
    image, pred = np.random.rand(3, 16, 16), np.zeros((2, 16, 16))
    pred[:, 4:10, 4:10] = 1
    assert plot_overlay(image, pred, tmp_path / "a.png", label=pred, title="case").stat().st_size > 0
    volume, mask = np.random.rand(1, 12, 10, 8), np.zeros((1, 12, 10, 8))
    mask[0, 3:8, 3:7, 2:6] = 1
    assert plot_overlay(volume, mask, tmp_path / "v.png", label=mask).stat().st_size > 0
    with pytest.raises(ValueError, match="spatial shape"):
        plot_overlay(volume, pred, tmp_path / "bad.png")


def test_stream_plot_draws_the_present_columns(tmp_path):
    rows = [{"domain": d, "dice_mean": float(i), "loss": 0.5, "reset": float(i == 2)} for i, d in enumerate("AABB")]
    assert plot_stream_stats(rows, tmp_path / "s.png").is_file()
    assert plot_stream_stats([{"domain": "A"}], tmp_path / "none.png") is None
