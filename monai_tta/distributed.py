"""Sharded adaptation under ``torchrun``: the process group, the rank's device, the rank's share of the stream, and
the gathering of per-case results on rank 0.

Each rank runs its own evaluator with its own adapter on its own share of the cases; nothing is averaged across ranks
(each rank adapts to its own cases, so there is no DDP wrapper and no gradient all-reduce). The share depends on the
adaptation setting, so that a case is never lost or seen twice and uneven counts are allowed (nothing is padded):

- ``episodic``: cases are dealt round-robin (case ``i`` goes to rank ``i % world_size``, as
  ``monai.data.DistributedSampler(shuffle=False, even_divisible=False)`` deals them). Every case starts from the
  source state, so every per-case result equals the single-process run's.
- ``domain``: the stream is cut into *segments*, the maximal runs of consecutive cases of one domain; whole segments
  are given to ranks (largest first, to the least-loaded rank), and each rank runs its segments in stream order. A
  segment starts from the source state on its rank as it does in one process, so every per-case result equals the
  single-process run's.
- ``continual``: the stream is cut into ``world_size`` contiguous blocks of near-equal length (the first blocks take
  one case more); rank ``r`` adapts continually over block ``r``, in order, starting from the source state. Rank 0's
  results equal the single-process run's first block; on the other ranks they differ, because a rank's model has not
  seen the cases of the blocks before its own. Use one process where the whole stream's history matters.

Every item of a share carries its position in the single-process stream (``stream_index``) and its segment
(``stream_segment``), so that rank 0 can put the gathered rows back in stream order and the evaluator can reset at
segment boundaries.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from monai.utils import look_up_option

from monai_tta.adapters.settings import Setting
from monai_tta.data.keys import DataKeys

__all__ = [
    "is_launched",
    "init_distributed",
    "destroy_distributed",
    "rank_device",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "barrier",
    "gather_objects",
    "stream_segments",
    "shard_indices",
    "shard_stream",
]

logger = logging.getLogger(__name__)

#: process-group timeout: how long a collective waits for the other ranks before it fails. A rank that finished its
#: share waits this long at the end (in the key metric's all-gather) for the slowest rank, so it bounds how uneven the
#: shares' running times may be; a rank that dies is caught much sooner (torchrun stops the others within seconds).
DEFAULT_TIMEOUT = datetime.timedelta(minutes=60)


def is_launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher that sets ``WORLD_SIZE`` and ``RANK``)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def _is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(backend: str | None = None, timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> bool:
    """Join the process group of a ``torchrun`` launch; a no-op in a plain single process or when already joined.

    Args:
        backend: ``"nccl"`` or ``"gloo"``; default: ``nccl`` when CUDA is available, else ``gloo``.
        timeout: how long a collective waits for the other ranks before it fails.

    Returns:
        whether a process group is initialised after the call.
    """
    if _is_initialized():
        return True
    if not is_launched() or not dist.is_available():
        return False
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend, timeout=timeout)
    if dist.get_rank() > 0:  # the zoo's convention: only rank 0 logs at INFO
        logging.getLogger().setLevel(logging.WARNING)
    logger.info(f"joined the process group: {dist.get_world_size()} ranks, backend {backend}.")
    return True


def destroy_distributed() -> None:
    """Leave the process group if one is initialised (the ``finalize`` step of a ``multi_gpu_*.json`` run)."""
    if _is_initialized():
        dist.destroy_process_group()


def rank_device(timeout_minutes: float | None = None) -> torch.device:
    """Join the process group (when launched) and return this rank's device: ``cuda:<LOCAL_RANK>`` or the CPU.

    Args:
        timeout_minutes: the process group's timeout (:func:`init_distributed`); default: :data:`DEFAULT_TIMEOUT`.

    Raises:
        ValueError: if ``timeout_minutes`` is not positive.
    """
    if timeout_minutes is not None and not timeout_minutes > 0:
        raise ValueError(
            f"the process group's timeout must be a positive number of minutes, got {timeout_minutes} "
            "(dist_timeout_minutes in multi_gpu_inference.json)."
        )
    timeout = DEFAULT_TIMEOUT if timeout_minutes is None else datetime.timedelta(minutes=timeout_minutes)
    init_distributed(timeout=timeout)
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def get_rank() -> int:
    """The rank of this process (0 without a process group)."""
    return dist.get_rank() if _is_initialized() else 0


def get_world_size() -> int:
    """The number of ranks (1 without a process group)."""
    return dist.get_world_size() if _is_initialized() else 1


def is_main_process() -> bool:
    """Whether this is rank 0 (always true without a process group)."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank (a no-op without a process group)."""
    if get_world_size() > 1:
        dist.barrier()


def gather_objects(obj: Any) -> list[Any] | None:
    """Gather a picklable object from every rank on rank 0.

    Returns:
        on rank 0, the list of every rank's object in rank order; on the other ranks ``None``. Without a process
        group: ``[obj]``.
    """
    world = get_world_size()
    if world == 1:
        return [obj]
    gathered: list[Any] | None = [None] * world if is_main_process() else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def stream_segments(data: Sequence[Mapping], domain_key: str = DataKeys.DOMAIN) -> list[int]:
    """The segment of each case: segments are maximal runs of consecutive cases of one domain, numbered from 0."""
    segments: list[int] = []
    previous: Any = object()
    for item in data:
        domain = item.get(domain_key)
        if not segments:
            segments.append(0)
        else:
            segments.append(segments[-1] + (domain != previous))
        previous = domain
    return segments


def shard_indices(segments: Sequence[int], setting: str, rank: int, world_size: int) -> list[int]:
    """Stream positions of ``rank``'s share (see the module docstring for the rule of each setting).

    Args:
        segments: the segment of each case (:func:`stream_segments`).
        setting: ``"episodic"``, ``"domain"`` or ``"continual"``.
        rank: this rank.
        world_size: number of ranks.

    Raises:
        ValueError: for an unknown setting, a rank outside ``[0, world_size)``, or when some rank would get no case
            (fewer cases, or in the ``domain`` setting fewer domain segments, than ranks).
    """
    setting = look_up_option(setting, Setting)
    n = len(segments)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}.")
    if setting == Setting.EPISODIC:
        shares = [list(range(r, n, world_size)) for r in range(world_size)]
    elif setting == Setting.CONTINUAL:
        base, extra = divmod(n, world_size)
        bounds = [0]
        for r in range(world_size):
            bounds.append(bounds[-1] + base + (r < extra))
        shares = [list(range(bounds[r], bounds[r + 1])) for r in range(world_size)]
    else:
        members: dict[int, list[int]] = {}
        for i, s in enumerate(segments):
            members.setdefault(s, []).append(i)
        shares = [[] for _ in range(world_size)]
        for s in sorted(members, key=lambda k: (-len(members[k]), k)):  # largest first, to the least loaded
            target = min(range(world_size), key=lambda r: (len(shares[r]), r))
            shares[target].extend(members[s])
        shares = [sorted(share) for share in shares]
    empty = [r for r, share in enumerate(shares) if not share]
    if empty:
        unit = "domain segments" if setting == Setting.DOMAIN else "cases"
        count = len(set(segments)) if setting == Setting.DOMAIN else n
        raise ValueError(
            f"{setting} sharding over {world_size} ranks: the stream has {count} {unit}, so ranks {empty} would get "
            f"no case; run with at most {count} ranks (torchrun --nproc_per_node)."
        )
    return shares[rank]


def shard_stream(
    data: Sequence[Mapping],
    setting: str,
    rank: int | None = None,
    world_size: int | None = None,
    domain_key: str = DataKeys.DOMAIN,
) -> list[dict]:
    """This rank's share of a stream of cases, each item tagged with ``stream_index`` and ``stream_segment``.

    With one rank the share is the whole stream (tagged the same way), so a config may call it unconditionally.

    Args:
        data: the single-process stream (a list of data dictionaries, in order).
        setting: the adapter's setting (``adapter.setting``).
        rank: this rank; default: the process group's (joined first when launched by ``torchrun``).
        world_size: number of ranks; default: the process group's.
        domain_key: data key of the domain name.

    Raises:
        ValueError: see :func:`shard_indices`.
    """
    if rank is None or world_size is None:
        init_distributed()
        rank = get_rank() if rank is None else rank
        world_size = get_world_size() if world_size is None else world_size
    segments = stream_segments(data, domain_key)
    indices = shard_indices(segments, setting, rank, world_size)
    share = []
    for i in indices:
        item = dict(data[i])
        item[DataKeys.STREAM_INDEX.value] = i
        item[DataKeys.STREAM_SEGMENT.value] = segments[i]
        share.append(item)
    logger.info(f"rank {rank}/{world_size}: {len(share)} of {len(data)} cases ({setting} sharding).")
    return share
