"""Sharded adaptation under torchrun (2 CPU processes, gloo): shares, equality with one process, a dying rank."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny import tiny_bundle_overrides

from monai_tta.distributed import rank_device, shard_indices, shard_stream, stream_segments
from monai_tta.reports import read_case_csv
from monai_tta.zoo.run import run_bundle

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
    with pytest.raises(ValueError, match="dist_timeout_minutes"):
        rank_device(0)


_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
_TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]


def _torchrun(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([*_TORCHRUN, *args], cwd=cwd, env=_ENV, capture_output=True, text=True, timeout=300)


def _bundle_args(overrides: dict, out: Path, setting: str) -> list[str]:
    """``run`` and the arguments of the GraTa bundle's sharded evaluation on the tiny data (the source model exists)."""
    configs = [f"configs/{c}" for c in ("inference.json", "evaluate.json", "multi_gpu_inference.json")]
    configs.append("configs/multi_gpu_evaluate.json")
    args = ["run", "--config_file", str(configs), "--meta_file", "configs/metadata.json"]
    args += ["--logging_file", "configs/logging.conf", "--generate_data", "False"]
    args += ["--dataset_dir", overrides["dataset_dir"], "--output_dir", str(out)]
    args += ["--source_checkpoint", overrides["source_checkpoint"], "--image_size", "32", "--num_overlays", "0"]
    return args + ["--target_domains", str(list(DOMAINS)), "--setting", setting]


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
    done = _torchrun("tests/sharded_runs.py", GRATA.name, str(tmp / "overrides.json"), str(tmp / "sharded"), *settings)
    assert done.returncode == 0, done.stderr[-4000:]
    return tmp, overrides


@pytest.mark.integration
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


@pytest.mark.integration
def test_continual_ranks_adapt_over_contiguous_blocks(runs):
    tmp, _ = runs
    single, sharded = _rows(tmp / "single" / "continual"), _rows(tmp / "sharded" / "continual")
    assert [r["case_id"] for r in sharded] == [r["case_id"] for r in single]
    assert sharded[:5] == single[:5]  # rank 0's block is the start of the single-process stream
    assert sharded[5:] != single[5:]  # rank 1 starts its block from the source model


@pytest.mark.integration
def test_a_case_that_fails_on_one_rank_is_a_failed_row_in_stream_order(runs):
    """A case whose file is missing reaches the report through rank 1's engine as a failed row (with its stream
    position), as in one process: the gathered rows are complete and the stale summary is replaced."""
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
    args = ["-m", "monai.bundle", *_bundle_args(overrides, out, "domain")]
    done = _torchrun(*args, "--datalist_file", str(broken / "datalist.json"), cwd=GRATA)
    assert done.returncode == 0, (done.stderr + done.stdout)[-3000:]
    rows = read_case_csv(out / "GraTa" / "cases.csv")
    failed = [r for r in rows if r["status"] == "failed"]
    assert [r["case_id"] for r in failed] == [Path(lost).stem] and Path(lost).name in failed[0]["error"]
    assert [r["domain"] for r in rows] == [d for d in DOMAINS for _ in range(3)]  # stream order, every case once
    summary = json.loads((out / "GraTa" / "summary.json").read_text())["GraTa"]
    assert summary["dim"]["n_failed"] == 1 and summary["overall"]["n_failed"] == 1


def _run(command: list[str], log: Path, during=None, timeout: float = 300) -> subprocess.Popen:
    """Run ``command`` in its own session (logging to ``log``), call ``during(process)`` while it runs, and wait; if it
    outlives ``timeout`` (a rank blocked forever), kill its whole session and fail."""
    with open(log, "w") as out:
        process = subprocess.Popen(
            command, cwd=GRATA, env=_ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            if during is not None:
                during(process)
            process.wait(timeout=timeout)
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
    return process


def _worker_pid(launcher: int, rank: int) -> int | None:
    """The process id of the ``torchrun`` worker of ``rank``: a child of the launcher whose environment says so."""
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) != launcher:
                continue
            if f"RANK={rank}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                return int(proc.name)
        except (OSError, IndexError, ValueError):  # the process ended meanwhile
            continue
    return None


def _position(path: Path) -> int:
    """How many cases of its share a rank has finished, by its checkpoint (0 before the first)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["position"])
    except (OSError, RuntimeError, EOFError):  # not written yet
        return 0


def _trace(folder: Path, rank: int) -> list[int]:
    path = folder / f"trace.rank{rank}.txt"
    return [int(line) for line in path.read_text().split()] if path.is_file() else []


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="finds the worker's process id in /proc")
def test_a_rank_killed_mid_stream_fails_the_run_and_the_rerun_resumes_each_rank(runs):
    """SIGKILL rank 0 mid-segment (the domain setting, so its adapter state must be restored) while rank 1, done with
    its share, waits for it; the rerun of the same command resumes each rank where its checkpoint says."""
    tmp, overrides = runs
    out, traces = tmp / "killed", tmp / "traces"
    (out / "GraTa").mkdir(parents=True)
    stale = [out / "GraTa" / name for name in ("summary.json", "cases.csv", "cases.rank2.csv")]
    for path in stale:  # results of an earlier run (one with 3 ranks) must not survive a failed run
        path.write_text("{}")
    command = [*_TORCHRUN, str(ROOT / "tests" / "traced_bundle.py"), str(traces), "0.6"]
    command += _bundle_args(overrides, out, "domain")
    segments = stream_segments([{"domain": d} for d in DOMAINS for _ in range(3)])
    shares = [shard_indices(segments, "domain", r, 2) for r in range(2)]
    assert shares == [[0, 1, 2, 6, 7, 8], [3, 4, 5]]
    progress = [out / "GraTa" / f"progress.rank{r}.pt" for r in range(2)]

    def kill_rank_0_mid_stream(launcher: subprocess.Popen) -> None:
        deadline = time.monotonic() + 120
        while launcher.poll() is None and time.monotonic() < deadline and _position(progress[0]) < 4:
            time.sleep(0.02)  # rank 0 is done with its first segment and one case into its second
        pid = _worker_pid(launcher.pid, 0)
        assert launcher.poll() is None and pid is not None, "the run ended before rank 0 could be killed"
        os.kill(pid, signal.SIGKILL)

    killed = _run(command, tmp / "killed.log", kill_rank_0_mid_stream)
    logged = (tmp / "killed.log").read_text()
    assert killed.returncode != 0, logged[-4000:]
    assert "Root Cause" in logged and "SIGKILL" in logged, logged[-4000:]  # torchrun names the rank and its signal
    assert not any(path.exists() for path in stale)
    done = [_position(p) for p in progress]
    first = [_trace(traces, r) for r in range(2)]
    assert 4 <= done[0] < 6 and first[0][: done[0]] == shares[0][: done[0]] and len(first[0]) - done[0] in (0, 1)

    rerun = _run(command, tmp / "rerun.log")
    assert rerun.returncode == 0, (tmp / "rerun.log").read_text()[-4000:]
    for r in range(2):  # each rank scored only what its checkpoint had not: none of its finished cases again
        assert _trace(traces, r)[len(first[r]) :] == shares[r][done[r] :]
    folder = out / "GraTa"
    expected = tmp / "sharded" / "domain" / "GraTa"
    assert read_case_csv(folder / "cases.csv") == read_case_csv(expected / "cases.csv")
    assert _rows(out) == _rows(tmp / "single" / "domain")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary == json.loads((expected / "summary.json").read_text())
    key_metric = re.search(r"Key metric: mean_dice best value: (\S+)", (tmp / "rerun.log").read_text())
    # the key metric covers all 9 cases: each rank restored the values of the cases it had done
    assert float(key_metric.group(1)) == pytest.approx(summary["GraTa"]["overall"]["dice_mean"], abs=1e-4)


def test_rank_0_refuses_rows_that_miss_or_repeat_a_case(tmp_path, monkeypatch):
    """At completion rank 0 gathers the ranks' rows (here two ranks' worth, faked): a missing or repeated case is an
    error and nothing is written; complete rows are merged in stream order into cases.csv and the summary."""
    from ignite.engine import Engine, Events

    from monai_tta import distributed
    from monai_tta.handlers import CaseReport

    report = CaseReport(tmp_path, "M", expected_cases=lambda: 4, compute_asd=False, plots=False)
    engine = Engine(lambda engine, batch: None)
    report.attach(engine)
    row = {"case_id": "c", "domain": "A", "method": "M", "status": "ok", "dice_disc": 1.0, "dice_cup": 1.0}
    rows = [{**row, "case_id": f"c{i}", "dice_mean": float(i)} for i in range(4)]
    monkeypatch.setattr(distributed, "gather_objects", lambda obj: [([0, 2], rows[:2]), ([1, 2], rows[2:])])
    with pytest.raises(RuntimeError, match=r"cases \[3\] are missing and \[2\] appear twice"):
        engine.fire_event(Events.COMPLETED)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(distributed, "gather_objects", lambda obj: [([0, 2], rows[:2]), ([1, 3], rows[2:])])
    engine.fire_event(Events.COMPLETED)
    merged = read_case_csv(tmp_path / "cases.csv")
    assert [r["case_id"] for r in merged] == ["c0", "c2", "c1", "c3"]  # stream order: rank 0 had cases 0 and 2
    assert json.loads((tmp_path / "summary.json").read_text())["M"]["overall"]["n"] == 4
