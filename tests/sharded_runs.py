"""Run by ``torchrun`` from the tests: a bundle sharded over the ranks, once per setting.

Usage: ``torchrun --nproc_per_node 2 tests/sharded_runs.py <bundle> <overrides.json> <output root> <setting> [...]``
(``<bundle>``: a folder name under ``bundles/``); each setting's results go to ``<output root>/<setting>``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from monai_tta.distributed import destroy_distributed
from monai_tta.zoo.run import run_bundle

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
CONFIGS = ["inference.json", "evaluate.json", "multi_gpu_inference.json", "multi_gpu_evaluate.json"]

if __name__ == "__main__":
    torch.set_num_threads(1)
    bundle, overrides = BUNDLES / sys.argv[1], json.loads(Path(sys.argv[2]).read_text())
    for setting in sys.argv[4:]:
        out = {"output_dir": str(Path(sys.argv[3]) / setting), "setting": setting, "finalize": []}
        run_bundle(bundle, CONFIGS, {**overrides, **out}, logging_file=False)  # one process group for every run
    destroy_distributed()
