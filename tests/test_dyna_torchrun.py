"""DyNA under torchrun (2 CPU processes, gloo): each rank's run is one process's run over that rank's block."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from tiny import tiny_bundle_overrides

from monai_tta.reports import read_case_csv
from monai_tta.zoo.run import run_bundle

pytestmark = pytest.mark.integration  # bundle runs (see pyproject's markers)

ROOT = Path(__file__).resolve().parents[1]
DYNA = ROOT / "bundles" / "dyna_fundus_segmentation"
CONFIGS = ["inference.json", "daynight.json"]
DOMAINS = ("camera", "dim")
#: 4 cases per domain, the last of each held out, and an unreadable case inserted after dim's first: a stream of 7
#: cases, camera_0000..0002, dim_0000, dim_lost, dim_0001, dim_0002. Continual sharding over 2 ranks gives contiguous
#: blocks, the first one case longer: rank 0 runs 2 days (2 + 2 images), rank 1 one day (a failed row and 2 images).
LOST = {"image": "dim/images/lost.png", "label": "dim/masks/lost.png", "domain": "dim", "case_id": "dim_lost"}
STREAM = ["camera_0000", "camera_0001", "camera_0002", "dim_0000", "dim_lost", "dim_0001", "dim_0002"]
BLOCKS = [(0, 4), (4, 7)]
#: days of 2 images, nights of one epoch that train (every pixel confident, a large step), a checkpoint per iteration
DYNA_TINY = {
    "heldout_per_domain": 1,
    "images_per_day": 2,
    "night_epochs": 1,
    "night_batch_size": 1,
    "night_lr": 0.05,
    "confidence": 0.5,
    "checkpoint_interval": 1,
    "generate_data": False,
}


@contextmanager
def one_thread():
    """Run in one thread, as each torchrun process does, so that float sums are taken in the same order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _torchrun_bundle(overrides: dict) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 -m monai.bundle run`` with the DyNA bundle's sharded day/night configs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    configs = [f"configs/{c}" for c in (*CONFIGS, "multi_gpu_daynight.json")]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
    command += ["-m", "monai.bundle", "run", "--config_file", str(configs), "--meta_file", "configs/metadata.json"]
    command += ["--logging_file", "configs/logging.conf"]
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    return subprocess.run(command, cwd=DYNA, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The source model, one process's run over each rank's block, and the 2-rank torchrun."""
    tmp = tmp_path_factory.mktemp("dyna_torchrun")
    tiny = tiny_bundle_overrides(tmp, DOMAINS, per_domain=4)
    prepare = {**tiny, "run": ["$@prepare_data()", "$@ensure_source"]}
    with one_thread():  # the data and the source model, made once in one process (as a sharded run requires)
        run_bundle(DYNA, ["inference.json"], prepare, logging_file=False)
    datalist = json.loads((tmp / "data" / "datalist.json").read_text())
    datalist["dim"].insert(1, LOST)
    (tmp / "data" / "uneven.json").write_text(json.dumps(datalist))
    overrides = {
        "source_checkpoint": tiny["source_checkpoint"],
        "image_size": tiny["image_size"],
        "target_domains": list(DOMAINS),
        "datalist_file": str(tmp / "data" / "uneven.json"),
        **DYNA_TINY,
    }
    for r, (start, end) in enumerate(BLOCKS):
        block = {"output_dir": str(tmp / f"block{r}"), "stream#data": f"$@stream_data[{start}:{end}]"}
        with one_thread():
            run_bundle(DYNA, CONFIGS, {**overrides, **block}, logging_file=False)
    done = _torchrun_bundle({**overrides, "output_dir": str(tmp / "sharded")})
    return tmp, done


def _outputs(folder: Path) -> tuple[dict, list[dict]]:
    return json.loads((folder / "report.json").read_text()), read_case_csv(folder / "cases.csv")


def _global_student(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "checkpoint.pt", weights_only=True)["global_student"]


def test_the_sharded_run_ends_cleanly(runs):
    _, done = runs
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.mark.parametrize("rank", [0, 1])
def test_each_rank_is_one_process_over_its_block(runs, rank):
    tmp, done = runs
    assert done.returncode == 0, done.stderr[-4000:]
    report, rows = _outputs(tmp / "sharded" / "DyNA" / f"rank{rank}")
    expected_report, expected_rows = _outputs(tmp / f"block{rank}" / "DyNA")
    assert {k: report["config"].pop(k) for k in ("rank", "world_size")} == {"rank": rank, "world_size": 2}
    assert report == expected_report  # every other value, exactly
    assert rows == expected_rows
    # the blocks differ in length and in days; each night trained the rank's own global student, the same weights
    assert (report["n_images"], report["n_days"], report["n_failed"]) == [(4, 2, 0), (3, 1, 1)][rank]
    assert report["n_nights"] == report["n_days"] and all(d["night_loss"] > 0 for d in report["days"])
    student = _global_student(tmp / "sharded" / "DyNA" / f"rank{rank}")
    expected = _global_student(tmp / f"block{rank}" / "DyNA")
    assert student.keys() == expected.keys() and all(torch.equal(student[k], expected[k]) for k in student)
    source = torch.load(tmp / "models" / "model.pt", weights_only=True)
    assert any(not torch.equal(student[k], source[k]) for k in source if source[k].is_floating_point())


def test_every_stream_case_is_in_exactly_one_rank(runs):
    tmp, _ = runs
    rows = [_outputs(tmp / "sharded" / "DyNA" / f"rank{r}")[1] for r in range(2)]
    assert [r["case_id"] for r in rows[0]] == STREAM[:4] and [r["case_id"] for r in rows[1]] == STREAM[4:]
    assert [r["status"] for r in rows[1]] == ["failed", "ok", "ok"] and "lost.png" in rows[1][0]["error"]
    assert sorted(p.name for p in (tmp / "sharded" / "DyNA").iterdir()) == ["rank0", "rank1"]
