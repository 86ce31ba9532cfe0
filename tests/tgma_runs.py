"""The TGMA runner of the tests: tiny target inputs, three tiny source networks and the run's options (used by
``test_tgma.py``, ``test_tgma_ddp.py``, the kill script and ``tgma_ddp_runs.py``)."""

from __future__ import annotations

import torch
from monai.data import MetaTensor
from tiny import tiny_net
from torch import nn

from monai_tta.tgma import TGMARunner

__all__ = [
    "target_items",
    "sources",
    "make_runner",
    "ddp_items",
    "make_ddp_runner",
    "RANKS",
    "BATCH",
    "EPOCHS",
    "REFRESH",
]

#: the data-parallel run: ranks, per-rank batch, epochs, refresh interval.
RANKS, BATCH, EPOCHS, REFRESH = 2, 2, 2, 1


def target_items(n_cases: int = 3, per_case: int = 2) -> list[dict]:
    """Target inputs as MONAI pipelines give them (``MetaTensor`` images), with labels for the report."""
    g = torch.Generator().manual_seed(3)
    items = []
    for c in range(n_cases):
        for _ in range(per_case):
            image = MetaTensor(torch.rand(2, 8, 8, generator=g))
            items.append(
                {
                    "image": image,
                    "label": (image[:1] > 0.5).float().expand(2, -1, -1).clone(),
                    "case_id": f"case{c}",
                    "domain": "T",
                }
            )
    return items


def sources() -> dict[str, nn.Module]:
    return {name: tiny_net(seed) for seed, name in enumerate(["A", "B", "C"])}


def make_runner(out, callback=None, srcs=None, **kwargs) -> TGMARunner:
    """The run of the tests (the "same command" when resuming)."""
    options = dict(epochs=3, batch_size=4, lr=1e-2, margin=1, checkpoint_interval=1, seed=5)
    options.update(kwargs)
    return TGMARunner(srcs if srcs is not None else sources(), out, callback=callback, **options)


def ddp_items() -> list[dict]:
    """7 target inputs: global batches of 4 (2 ranks x 2) leave a last batch of 3 per epoch, dealt 2 / 1."""
    return target_items(n_cases=7, per_case=1)


def make_ddp_runner(out, callback=None) -> TGMARunner:
    """The runner of the torchrun script and of the single-process reference (the same options)."""
    return make_runner(out, callback, epochs=EPOCHS, batch_size=BATCH, refresh=REFRESH, checkpoint_interval=1)
