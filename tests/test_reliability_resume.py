"""Nothing lost: a run killed mid-stream and started again with the same command ends with the same results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny import digest, tiny_bundle_overrides

from monai_tta.handlers import CaseReport
from monai_tta.reports import read_case_csv
from monai_tta.zoo.run import run_bundle

pytestmark = pytest.mark.integration  # bundle runs (see pyproject's markers)

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
GRATA = BUNDLES / "grata_fundus_segmentation"
PER_DOMAIN = 5

#: the child run: the bundle's own command, each case slowed down so that the kill lands in the middle of the stream.
CHILD = """
import json, sys, time
import torch
torch.set_num_threads(1)
from monai_tta.zoo.run import run_bundle
from monai_tta.handlers import CaseReport
record = CaseReport.__call__
def slow(self, engine):
    record(self, engine)
    time.sleep(0.3)
CaseReport.__call__ = slow
args = json.loads(sys.argv[1])
run_bundle(args["root"], args["configs"], args["overrides"], logging_file=False)
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny data (2 domains x 5 cases) and its source model, trained once."""
    tmp = tmp_path_factory.mktemp("resume")
    overrides = tiny_bundle_overrides(tmp, ("camera", "dim"), PER_DOMAIN)
    run_bundle(GRATA, ["inference.json"], {**overrides, "output_dir": str(tmp / "warmup")}, logging_file=False)
    return overrides


def _rows(out: Path, method: str) -> list[dict]:
    return read_case_csv(out / method / "cases.csv")


def test_a_run_killed_with_sigkill_resumes_and_ends_with_the_same_results(tiny, tmp_path):
    overrides = {**tiny, "setting": "continual"}
    configs = ["inference.json", "evaluate.json"]
    ckpt_digest = digest(tiny["source_checkpoint"])
    whole = run_bundle(GRATA, configs, {**overrides, "output_dir": str(tmp_path / "whole")}, logging_file=False)
    expected = _rows(tmp_path / "whole", "GraTa")

    killed = {**overrides, "output_dir": str(tmp_path / "killed")}
    args = json.dumps({"root": str(GRATA), "configs": configs, "overrides": killed})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, args], env=env, cwd=str(tmp_path))
    csv_path = tmp_path / "killed" / "GraTa" / "cases.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if csv_path.is_file() and len(csv_path.read_text().splitlines()) >= 1 + 4:  # header + 4 cases
            break
        time.sleep(0.01)
    assert child.poll() is None, "the child ended before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    done = len(read_case_csv(csv_path))
    assert 4 <= done < 2 * PER_DOMAIN and not (tmp_path / "killed" / "GraTa" / "summary.json").exists()

    workflow = run_bundle(GRATA, configs, killed, logging_file=False)  # the same command again
    assert (
        workflow.parser.get_parsed_content("run_checkpoint").resumed_at >= done - 1
    )  # at most the case between the CSV and the checkpoint is done again
    assert _rows(tmp_path / "killed", "GraTa") == expected
    metric = workflow.parser.get_parsed_content("evaluator").state.metrics["mean_dice"]  # over every case: restored
    assert metric == whole.parser.get_parsed_content("evaluator").state.metrics["mean_dice"]
    summary = json.loads((tmp_path / "killed" / "GraTa" / "summary.json").read_text())
    assert summary == json.loads((tmp_path / "whole" / "GraTa" / "summary.json").read_text())
    runs = ("whole", "killed")
    overlays = [sorted(p.name for p in (tmp_path / run / "GraTa" / "overlays").iterdir()) for run in runs]
    assert overlays[1] == overlays[0] and len(overlays[0]) == 4  # the resumed cases are not taken for the first ones
    assert digest(tiny["source_checkpoint"]) == ckpt_digest  # the source checkpoint is never written

    again = run_bundle(GRATA, configs, killed, logging_file=False)  # once more: every case was done, none runs again
    assert again.parser.get_parsed_content("run_checkpoint").resumed_at == 2 * PER_DOMAIN
    assert again.parser.get_parsed_content("evaluator").state.metrics["mean_dice"] == metric
    assert _rows(tmp_path / "killed", "GraTa") == expected
    assert json.loads((tmp_path / "killed" / "GraTa" / "summary.json").read_text()) == summary


class _Crash(RuntimeError):
    pass


def _chain(error: BaseException) -> list[BaseException]:
    """The error and its causes (the bundle's config expressions wrap what the run raised)."""
    chain = [error]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    return chain


@pytest.mark.parametrize(
    "method,bundle", [("TENT", "tent_fundus_segmentation"), ("VPTTA", "vptta_fundus_segmentation")]
)
def test_a_crashed_continual_run_resumes_with_the_adapter_state(tiny, tmp_path, method, bundle, monkeypatch):
    overrides = {**tiny, "setting": "continual"}
    configs = ["inference.json", "evaluate.json"]
    root = BUNDLES / bundle
    run_bundle(root, configs, {**overrides, "output_dir": str(tmp_path / "whole")}, logging_file=False)
    expected = _rows(tmp_path / "whole", method)

    record = CaseReport.__call__

    def crash_after_three(self, engine):
        record(self, engine)
        if len(self.rows) == 3 + PER_DOMAIN:  # mid-way through the second domain
            raise _Crash("simulated crash")

    crashed = {**overrides, "output_dir": str(tmp_path / "crashed")}
    monkeypatch.setattr(CaseReport, "__call__", crash_after_three)
    with pytest.raises(RuntimeError) as info:
        run_bundle(root, configs, crashed, logging_file=False)
    assert any(isinstance(e, _Crash) for e in _chain(info.value))
    monkeypatch.setattr(CaseReport, "__call__", record)
    run_bundle(root, configs, crashed, logging_file=False)
    assert _rows(tmp_path / "crashed", method) == expected


def test_a_checkpoint_of_other_settings_is_refused(tiny, tmp_path):
    out = {**tiny, "output_dir": str(tmp_path / "out")}
    run_bundle(GRATA, ["inference.json", "evaluate.json"], out, logging_file=False)
    with pytest.raises(RuntimeError) as info:
        run_bundle(GRATA, ["inference.json", "evaluate.json"], {**out, "inferer#lr": 0.01}, logging_file=False)
    message = "progress.pt was written by a run over other cases or with another method; delete it"
    assert any(isinstance(e, ValueError) and message in str(e) for e in _chain(info.value))
