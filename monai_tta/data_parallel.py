"""Data-parallel training under ``torchrun``: one model trained by every rank on its part of each global batch (DDP).

This is the training counterpart of :mod:`monai_tta.distributed` (which shards *adaptation*: one adapter per rank, no
gradient averaging). TGMA's adaptation is ordinary training of one target model on one data set, so there MONAI's
and PyTorch's data parallelism is the right tool (the Model Zoo's ``multi_gpu_train.json``: the network wrapped in
``DistributedDataParallel``, a sampler that gives each rank its part of the data, rank 0 writing the files).

What ``N`` ranks change, and what they keep (the rule of :func:`rank_batch`):

- The run keeps the single-process *global* schedule of batches (same epochs, same shuffles, same seeds), with a
  global batch of ``N x`` the per-rank batch; rank ``r`` takes the elements ``r, r + N, ...`` of each global batch
  (how ``DistributedSampler`` deals a shuffled order, without its padding: the last batch of an epoch may split
  unevenly). Only a last batch with fewer inputs than ranks, which would leave a rank with nothing to run, is filled
  up to ``N`` inputs by repeating its own inputs (:func:`fill_global_batches`; the zoo's ``DistributedSampler`` pads
  every epoch by repeating inputs): the batch's Dice then weighs its inputs unequally, a deviation from one process
  that only such a batch has. The gradient is that of the loss over the whole
  global batch: DDP averages the ranks' gradients, and a loss that is not a mean over samples (a batch Dice) sums its
  terms across ranks first (:func:`all_reduce_sum`, differentiable).
- BatchNorm layers normalise each rank's part with its own statistics (DDP's default and the zoo's; PyTorch's
  ``SyncBatchNorm`` needs GPUs, so it could not run the same way under ``gloo`` on CPU). The running statistics are
  rank 0's: DDP broadcasts rank 0's buffers before every forward. So a run on ``N`` ranks equals one process running
  the same global batches with BatchNorm applied to each rank's part separately ("ghost" batches of the per-rank
  size), and the per-rank batch size is the batch size the BatchNorm statistics see, whatever ``N``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from monai_tta.distributed import get_rank, get_world_size, is_main_process

__all__ = ["wrap_ddp", "rank_batch", "fill_global_batches", "broadcast_object", "all_reduce_sum"]


def wrap_ddp(module: nn.Module, device: torch.device | str | None = None) -> nn.Module:
    """``module`` wrapped in ``DistributedDataParallel`` when several ranks run, else ``module`` itself.

    Args:
        module: the network to train (already on ``device``); keep a reference to it for its ``state_dict``.
        device: the rank's device (``cuda:<LOCAL_RANK>`` or the CPU).
    """
    if get_world_size() == 1:
        return module
    device = torch.device(device) if device is not None else torch.device("cpu")
    device_ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def rank_batch(batch: Sequence[Any], rank: int | None = None, world_size: int | None = None) -> list[Any]:
    """This rank's part of a global batch: its elements ``rank, rank + world_size, ...``.

    Args:
        batch: the global batch (e.g. a list of input indices).
        rank: default: the process group's.
        world_size: default: the process group's.
    """
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    return list(batch[rank::world_size])


def fill_global_batches(schedule: Sequence[Sequence[Any]], world_size: int) -> list[list[Any]]:
    """The global batches, each one with fewer elements than ranks filled up to ``world_size`` by repeating its own
    elements in order (so that every rank has an input to run; other batches are unchanged).

    Args:
        schedule: the global batches (non-empty).
        world_size: number of ranks.
    """
    filled = []
    for batch in schedule:
        batch = list(batch)
        if 0 < len(batch) < world_size:
            batch = [batch[j % len(batch)] for j in range(world_size)]
        filled.append(batch)
    return filled


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself without a process group); other ranks may pass ``None``."""
    if get_world_size() == 1:
        return obj
    box = [obj if is_main_process() else None]
    dist.broadcast_object_list(box, src=0)  # nccl: through the rank's current GPU (set by init_distributed)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over the ranks, differentiable (``tensor`` itself without a process group).

    Its gradient is the sum over ranks of the upstream gradients, so when every rank computes the same loss of the
    summed terms, DDP's average of the ranks' gradients is the gradient of that loss (``N`` ranks each contribute
    ``N x`` their share, averaged by ``N``).
    """
    if get_world_size() == 1:
        return tensor
    return _AllReduceSum.apply(tensor)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; backward: the sum over the ranks of the gradients (the adjoint of the sum)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad
