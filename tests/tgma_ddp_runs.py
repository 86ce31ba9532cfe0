"""Run by ``torchrun`` from ``test_tgma_ddp.py``: TGMA's adaptation as data-parallel training over the ranks.

Usage: ``torchrun --nproc_per_node 2 tests/tgma_ddp_runs.py <output_dir> <results_dir> [crash=<k>] [bundle=<json>]``.
Every rank saves what its ``run`` returned to ``<results_dir>/results.rank<r>.pt``. With ``crash=<k>``, rank 0 raises
right after writing the checkpoint of iteration ``k`` (the run then fails as a crash would). With ``bundle=<json>``
(a file of overrides), the TGMA bundle then runs with ``multi_gpu_adapt.json`` in the same process group.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from tgma_runs import ddp_items, make_ddp_runner

from monai_tta.distributed import destroy_distributed, get_rank, init_distributed
from monai_tta.zoo.run import run_bundle

TGMA = Path(__file__).resolve().parents[1] / "bundles" / "tgma_prostate_mr_segmentation"

if __name__ == "__main__":
    torch.set_num_threads(1)
    init_distributed()
    options = dict(arg.split("=", 1) for arg in sys.argv[3:])
    crash_at = int(options["crash"]) if "crash" in options else None

    def crash(event: str, info: dict) -> None:
        if event == "checkpoint" and info["iteration"] == crash_at:
            raise RuntimeError(f"simulated crash after the checkpoint of iteration {crash_at}")

    results = make_ddp_runner(sys.argv[1], callback=crash).run(ddp_items())
    Path(sys.argv[2]).mkdir(parents=True, exist_ok=True)
    torch.save(results, Path(sys.argv[2]) / f"results.rank{get_rank()}.pt")
    if "bundle" in options:
        overrides = {**json.loads(Path(options["bundle"]).read_text()), "finalize": []}  # one process group for all
        run_bundle(TGMA, ["adapt.json", "multi_gpu_adapt.json"], overrides, logging_file=False)
    destroy_distributed()
