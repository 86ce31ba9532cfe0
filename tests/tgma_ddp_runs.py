"""Run by ``torchrun`` from ``test_tgma_ddp.py``: TGMA's adaptation as data-parallel training over the ranks.

Usage: ``torchrun --nproc_per_node 2 tests/tgma_ddp_runs.py <output_dir> <results_dir> [<crash at iteration>]``.
Every rank saves what its ``run`` returned to ``<results_dir>/results.rank<r>.pt``; with a crash iteration, rank 0
raises right after writing that iteration's checkpoint (the run then fails as a crash would).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from test_tgma_ddp import ddp_items, make_ddp_runner

from monai_tta.distributed import destroy_distributed, get_rank, init_distributed

if __name__ == "__main__":
    torch.set_num_threads(1)
    init_distributed()
    crash_at = int(sys.argv[3]) if len(sys.argv) > 3 else None

    def crash(event: str, info: dict) -> None:
        if event == "checkpoint" and info["iteration"] == crash_at:
            raise RuntimeError(f"simulated crash after the checkpoint of iteration {crash_at}")

    results = make_ddp_runner(sys.argv[1], callback=crash).run(ddp_items())
    Path(sys.argv[2]).mkdir(parents=True, exist_ok=True)
    torch.save(results, Path(sys.argv[2]) / f"results.rank{get_rank()}.pt")
    destroy_distributed()
