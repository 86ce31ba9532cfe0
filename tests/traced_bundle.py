"""Run by ``torchrun`` from ``test_distributed.py``: ``python -m monai.bundle``, each scored case traced and slowed.

Usage: ``torchrun --nproc_per_node 2 tests/traced_bundle.py <trace dir> <seconds per case on rank 0> run
--config_file ... `` (after the first two arguments, those of ``python -m monai.bundle``). Each rank appends the
stream index of every case it scores to ``<trace dir>/trace.rank<r>.txt`` (so a test sees which cases a rerun
scored again), and rank 0 sleeps after each case (so that a kill lands in the middle of its stream while rank 1 has
finished and waits for it). Neither changes what the run computes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import fire
import torch
from monai.bundle.scripts import run

from monai_tta import distributed
from monai_tta.handlers import CaseReport

_record = CaseReport.__call__


def _traced(trace: Path, delay: float):
    def call(self: CaseReport, engine) -> None:
        _record(self, engine)
        rank = distributed.get_rank()
        with open(trace / f"trace.rank{rank}.txt", "a") as f:
            f.write(f"{self.indices[-1]}\n")
        if rank == 0:
            time.sleep(delay)

    return call


if __name__ == "__main__":
    torch.set_num_threads(1)
    trace_dir = Path(sys.argv[1])
    trace_dir.mkdir(parents=True, exist_ok=True)
    CaseReport.__call__ = _traced(trace_dir, float(sys.argv[2]))
    fire.Fire({"run": run}, command=sys.argv[3:])
