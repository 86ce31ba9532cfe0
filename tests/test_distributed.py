"""Sharded adaptation under torchrun (2 CPU processes, gloo): shares, equality with one process, a dying rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import tiny_bundle_overrides

from monai_tta.bundle_utils import run_bundle
from monai_tta.distributed import shard_indices, shard_stream, stream_segments
from monai_tta.reports import read_case_csv

ROOT = Path(__file__).resolve().parents[1]
GRATA = ROOT / "bundles" / "grata_fundus_segmentation"
DOMAINS = ("camera", "dim", "blur")  # 3 domains x 3 cases: 9 cases do not divide over 2 ranks


def test_shares_cover_the_stream_once_in_order():
    domains = list("AAABBCCCCAA")  # the last run of A is a second segment of domain A
    segments = stream_segments([{"domain": d} for d in domains])
    assert segments == [0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3]
    for setting in ("episodic", "domain", "continual"):
        shares = [shard_indices(segments, setting, r, 3) for r in range(3)]
        assert sorted(i for s in shares for i in s) == list(range(len(domains)))
        assert all(s == sorted(s) for s in shares)
    assert [shard_indices(segments, "episodic", r, 2) for r in range(2)] == [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9]]
    assert [shard_indices(segments, "continual", r, 3) for r in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    # whole segments, largest first to the least-loaded rank
    assert [shard_indices(segments, "domain", r, 3) for r in range(3)] == [[5, 6, 7, 8], [0, 1, 2], [3, 4, 9, 10]]
    share = shard_stream([{"domain": d} for d in domains], "domain", rank=2, world_size=3)
    assert [(c["stream_index"], c["stream_segment"]) for c in share] == [(3, 1), (4, 1), (9, 3), (10, 3)]
    with pytest.raises(ValueError, match="4 domain segments"):
        shard_indices(segments, "domain", 0, 5)


def _torchrun(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _rows(folder: Path) -> list[dict]:
    """Per-case rows without ``reset``: a rank's first case starts from the source state without reporting a reset."""
    return [{k: v for k, v in row.items() if k != "reset"} for row in read_case_csv(folder / "GraTa" / "cases.csv")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny GraTa bundle in one process and sharded over 2 ranks, per setting."""
    tmp = tmp_path_factory.mktemp("sharded")
    overrides = tiny_bundle_overrides(tmp, domains=DOMAINS, per_domain=3)
    overrides["num_overlays"] = 0
    settings = ("episodic", "domain", "continual")
    for setting in settings:
        out = {"output_dir": str(tmp / "single" / setting), "setting": setting}
        run_bundle(GRATA, ["inference.json", "evaluate.json"], {**overrides, **out}, logging_file=False)
    (tmp / "overrides.json").write_text(json.dumps(overrides))
    done = _torchrun("tests/sharded_runs.py", str(tmp / "overrides.json"), str(tmp / "sharded"), *settings)
    assert done.returncode == 0, done.stderr[-4000:]
    return tmp, overrides


@pytest.mark.parametrize("setting", ["episodic", "domain"])
def test_two_ranks_give_the_single_process_results(runs, setting):
    tmp, _ = runs
    single, sharded = _rows(tmp / "single" / setting), _rows(tmp / "sharded" / setting)
    assert len(sharded) == 9 and sharded == single
    folder = tmp / "sharded" / setting / "GraTa"
    assert [len(read_case_csv(folder / f"cases.rank{r}.csv")) for r in range(2)] in ([5, 4], [6, 3])
    summary = json.loads((folder / "summary.json").read_text())["GraTa"]
    expected = json.loads((tmp / "single" / setting / "GraTa" / "summary.json").read_text())["GraTa"]
    assert summary["overall"]["n"] == 9
    assert {d: v["dice_mean"] for d, v in summary.items()} == {d: v["dice_mean"] for d, v in expected.items()}


def test_continual_ranks_adapt_over_contiguous_blocks(runs):
    tmp, _ = runs
    single, sharded = _rows(tmp / "single" / "continual"), _rows(tmp / "sharded" / "continual")
    assert [r["case_id"] for r in sharded] == [r["case_id"] for r in single]
    assert sharded[:5] == single[:5]  # rank 0's block is the start of the single-process stream
    assert sharded[5:] != single[5:]  # rank 1 starts its block from the source model


def test_a_dying_rank_fails_the_run_loudly_and_leaves_no_summary(runs):
    tmp, overrides = runs
    out = tmp / "dying"
    (out / "GraTa").mkdir(parents=True)
    (out / "GraTa" / "summary.json").write_text("{}")  # a stale summary of an earlier run must not survive
    datalist = Path(overrides["dataset_dir"]) / "datalist.json"
    lost = json.loads(datalist.read_text())["dim"][0]["image"]  # the dim domain is rank 1's share
    broken = tmp / "broken"
    broken.mkdir()
    content = json.loads(datalist.read_text())
    content["dim"][0]["image"] = str(broken / Path(lost).name)  # a file that does not exist
    for section in content.values():
        for item in section if isinstance(section, list) and section and isinstance(section[0], dict) else []:
            for key in ("image", "label"):
                if not Path(item[key]).is_absolute():
                    item[key] = str(Path(overrides["dataset_dir"]) / item[key])
    (broken / "datalist.json").write_text(json.dumps(content))
    configs = [f"configs/{c}" for c in ("inference.json", "evaluate.json", "multi_gpu_inference.json")]
    configs.append("configs/multi_gpu_evaluate.json")
    args = ["-m", "monai.bundle", "run", "--config_file", str(configs), "--meta_file", "configs/metadata.json"]
    args += ["--logging_file", "configs/logging.conf", "--generate_data", "False"]
    args += ["--datalist_file", str(broken / "datalist.json"), "--output_dir", str(out)]
    args += ["--source_checkpoint", overrides["source_checkpoint"], "--image_size", "32", "--num_overlays", "0"]
    args += ["--target_domains", str(list(DOMAINS)), "--setting", "domain"]
    done = _torchrun(*args, cwd=GRATA)
    assert done.returncode != 0
    assert Path(lost).name in done.stderr + done.stdout
    assert not (out / "GraTa" / "summary.json").exists() and not (out / "GraTa" / "cases.csv").exists()


def test_rank_0_refuses_rows_that_miss_or_repeat_a_case(tmp_path, monkeypatch):
    from monai_tta import distributed
    from monai_tta.handlers import CaseReport

    report = CaseReport(tmp_path, "M", expected_cases=lambda: 4)
    row = {"case_id": "c", "domain": "A", "method": "M", "dice_mean": 1.0}
    monkeypatch.setattr(distributed, "gather_objects", lambda obj: [([0, 2], [row, row]), ([1, 2], [row, row])])
    with pytest.raises(RuntimeError, match=r"cases \[3\] are missing and \[2\] appear twice"):
        report._gather()
    assert not (tmp_path / "cases.csv").exists()
    monkeypatch.setattr(distributed, "gather_objects", lambda obj: [([0, 2], [row, row]), ([1, 3], [row, row])])
    assert report._gather() and len(read_case_csv(tmp_path / "cases.csv")) == 4
