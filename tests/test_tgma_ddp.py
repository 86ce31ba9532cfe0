"""TGMA's adaptation as data-parallel training under torchrun (2 CPU processes, gloo): equality with one process
running the same global batches, files written once by rank 0, resume after a crash, and the dealing rules."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tgma_runs import BATCH, EPOCHS, RANKS, REFRESH, ddp_items, make_ddp_runner
from tiny import tiny_tgma_overrides

from monai_tta.adapters.dyna.night import derived_seed
from monai_tta.adapters.dyna.store import night_schedule
from monai_tta.data_parallel import all_reduce_sum, broadcast_object, fill_global_batches, rank_batch, wrap_ddp
from monai_tta.networks import SmallUNet
from monai_tta.tgma import WeightedEnsemble, soft_dice_terms
from monai_tta.tgma.lftm import soft_dice_from_terms
from monai_tta.zoo.source import load_source_model

ROOT = Path(__file__).resolve().parents[1]
#: an iteration after which rank 0 crashes in the interrupted run (the second of the first epoch's 2 batches)
CRASH_AT = 1
SITES = ["source", "thick", "bias"]


def ghost_batch_reference(items: list[dict], ranks: int) -> dict[str, torch.Tensor]:
    """One process running the global batches of the ``ranks``-rank run, written out without DDP.

    Each global batch of ``ranks x BATCH`` inputs (the runner's schedule) is dealt to the ranks as ``rank_batch``
    does; each part goes through the ensemble on its own (BatchNorm statistics per part, as each rank normalises its
    own), starting from rank 0's buffers (DDP broadcasts them before every forward); the Dice terms of the parts are
    summed into the loss of the global batch; one Adam step; the buffers kept are rank 0's.
    """
    runner = make_ddp_runner("unused")  # nothing is written: only its options and transferability are used
    images = torch.stack([torch.as_tensor(item["image"]).float().as_tensor() for item in items])
    case_ids = runner.case_ids(items)
    stage = runner.transferability(images, case_ids, runner.sources)
    indices, weights = stage["selection"]["indices"], stage["selection"]["weights"]
    ensemble = WeightedEnsemble([copy.deepcopy(runner.sources[k]) for k in indices], weights).train()
    optimizer = torch.optim.Adam(ensemble.parameters(), lr=runner.lr)
    pseudo = stage["pseudo"]
    n = len(items)
    schedule = night_schedule(list(range(n)), BATCH * ranks, EPOCHS, seed=derived_seed(runner.seed, "adapt"))
    per_epoch = -(-n // (BATCH * ranks))
    norms = [m for m in ensemble.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    names = ("running_mean", "running_var", "num_batches_tracked")

    def set_buffers(values: list[torch.Tensor]) -> None:  # new tensors: the graph keeps the ones it saved
        for j, (m, name) in enumerate((m, name) for m in norms for name in names):
            setattr(m, name, values[j].clone())

    def get_buffers() -> list[torch.Tensor]:
        return [getattr(m, name) for m in norms for name in names]

    for k, batch in enumerate(fill_global_batches(schedule, ranks), start=1):
        start = get_buffers()
        intersection, total = 0, 0
        for r in range(ranks):
            part = rank_batch(batch, r, ranks)
            set_buffers(start)
            i, t = soft_dice_terms(ensemble(images[part]), pseudo[part].float())
            intersection, total = intersection + i.sum(0), total + t.sum(0)
            if r == 0:
                rank0 = get_buffers()
        set_buffers(rank0)
        optimizer.zero_grad()
        (1 - soft_dice_from_terms(intersection, total, 1.0)).backward()
        optimizer.step()
        if k % per_epoch == 0 and (k // per_epoch) % REFRESH == 0 and k < len(schedule):
            models = list(runner.sources)
            for member, idx in zip(ensemble.members, indices):
                models[idx] = member
            pseudo = runner.transferability(images, case_ids, models)["pseudo"]
            ensemble.train()
    return copy.deepcopy(ensemble.state_dict())


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={RANKS}"]
    return subprocess.run([*command, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """A 2-rank run that crashes (rank 0, after the checkpoint of iteration ``CRASH_AT``), then the same command, and
    in that second launch the TGMA bundle from scratch (source training and leave one site out, data-parallel)."""
    tmp = tmp_path_factory.mktemp("tgma_ddp")
    script = "tests/tgma_ddp_runs.py"
    crashed = _torchrun(script, str(tmp / "run"), str(tmp / "crashed"), f"crash={CRASH_AT}")
    assert crashed.returncode != 0 and "simulated crash" in crashed.stderr, crashed.stderr[-4000:]
    assert not (tmp / "run" / "target_model.pt").exists() and not (tmp / "crashed").exists()
    assert torch.load(tmp / "run" / "checkpoint.pt", weights_only=True)["iteration"] == CRASH_AT
    bundle = {**tiny_tgma_overrides(tmp / "bundle", SITES), "tgma#epochs": 1, "tgma#batch_size": 3}
    (tmp / "bundle.json").write_text(json.dumps(bundle))
    resumed = _torchrun(script, str(tmp / "run"), str(tmp / "results"), f"bundle={tmp / 'bundle.json'}")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    return tmp


@pytest.mark.integration
def test_two_ranks_equal_one_process_on_the_same_global_batches_after_a_resume(ddp_run):
    final = torch.load(ddp_run / "run" / "target_model.pt", weights_only=True)
    assert final["config"]["ranks"] == RANKS and final["config"]["batch_size"] == BATCH
    expected = ghost_batch_reference(ddp_items(), RANKS)
    assert list(final["ensemble"]) == list(expected)
    for key, value in expected.items():
        # only the order of float32 sums may differ (gloo's all-reduce against the loop above; observed: no
        # difference at all); 1e-5 is a thousandth of one Adam step (lr 1e-2), while normalising the global batch of
        # 4 with one BatchNorm statistic instead of per rank moves parameters by 5.5e-2 here
        torch.testing.assert_close(final["ensemble"][key], value, atol=1e-5, rtol=1e-5, msg=key)
    # every rank returns the same results; the files are rank 0's, written once (no per-rank copy, no leftover)
    results = [torch.load(ddp_run / "results" / f"results.rank{r}.pt", weights_only=False) for r in range(RANKS)]
    assert torch.equal(results[0]["adapted_preds"], results[1]["adapted_preds"])
    assert results[0]["loss_per_epoch"] == results[1]["loss_per_epoch"] and len(results[0]["loss_per_epoch"]) == 2
    names = sorted(p.name for p in (ddp_run / "run").iterdir())
    assert names == ["checkpoint.pt", "target_model.pt", "transferability.pt"]
    # the number of ranks is part of the run: one process refuses the 2-rank folder rather than mix schedules
    with pytest.raises(ValueError, match="another number of ranks"):
        make_ddp_runner(ddp_run / "run").run(ddp_items())


@pytest.mark.integration
def test_the_bundle_trains_its_sources_and_adapts_data_parallel(ddp_run):
    """Source training (multi_gpu_source_training.json, merged by ensure_source_checkpoint) and every held-out site's
    adaptation ran on the 2 ranks; rank 0 wrote the models and reports."""
    root = ddp_run / "bundle"
    net = SmallUNet(1, 3, features=(8, 16, 32, 64))
    for site in SITES:
        load_source_model(net, root / "models" / f"{site}.pt")  # the plain network's keys: DDP's wrapper unwrapped
        target = torch.load(root / "eval" / site / "target_model.pt", weights_only=True)
        assert target["config"]["ranks"] == RANKS and (root / "eval" / site / "report.json").is_file()
    assert json.loads((root / "eval" / "loso.json").read_text()).keys() == {*SITES, "mean"}
    assert not list(root.rglob(".*.tmp"))


def test_dealing_and_single_process_no_ops():
    assert rank_batch([5, 1, 4, 0, 2], 0, 2) == [5, 4, 2] and rank_batch([5, 1, 4, 0, 2], 1, 2) == [1, 0]
    assert rank_batch([3, 1], 0, 1) == [3, 1]
    assert fill_global_batches([[0, 1, 2], [3, 4]], 2) == [[0, 1, 2], [3, 4]]  # only too short batches change
    assert fill_global_batches([[0, 1, 2, 5], [3, 4]], 4) == [[0, 1, 2, 5], [3, 4, 3, 4]]
    net = torch.nn.Linear(2, 1)
    assert wrap_ddp(net) is net and broadcast_object({"a": 1}) == {"a": 1}
    x = torch.ones(2, requires_grad=True)
    assert all_reduce_sum(x) is x
