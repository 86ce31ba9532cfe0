"""Timing and memory probes of the benchmark: the wall time of each case's adapter call as a handler of the bundle
evaluator (:class:`CaseTimer`), and the timing phase (:func:`time_methods`): every method called in turn on the same
input, then the peak memory of one call of each (:class:`PeakMemory`: CUDA allocator statistics on a GPU, the
process's resident set on a Linux CPU)."""

from __future__ import annotations

import ctypes
import gc
import math
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from monai_tta.bench.data import prepare_copy, to_device
from monai_tta.bench.methods import make_adapter

__all__ = ["AMP", "CaseTimer", "PeakMemory", "proc_status_kb", "reset_rss_peak", "fix_mmap_threshold", "time_methods"]

#: ``--amp`` names -> the autocast dtype (``None``: no autocast).
AMP: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def proc_status_kb(field_name: str) -> float:
    """A field of ``/proc/self/status`` in KiB (e.g. ``VmRSS``, ``VmHWM``).

    Raises:
        OSError: where the file or the field is missing.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return float(line.split()[1])
    raise OSError(f"{field_name} not in /proc/self/status")


def reset_rss_peak() -> bool:
    """Free cached heap memory and reset the RSS high-water mark to the current RSS (Linux); False if impossible."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        proc_status_kb("VmHWM")
    except OSError:
        return False
    return True


def fix_mmap_threshold(threshold: int = 128 * 1024) -> bool:
    """Fix glibc's mmap threshold (``mallopt(M_MMAP_THRESHOLD)``): larger blocks are mapped, and unmapped when freed,
    so that the resident set follows the live tensors whatever ran before (glibc's default threshold is dynamic)."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, int(threshold)))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of a block of code, in MiB: CUDA tensors on a GPU, the process's resident set on a Linux CPU.

    Attributes after the block: ``kind`` (``"cuda_allocated"``, ``"process_rss"`` or ``"unavailable"``), ``base``
    (in use just before), ``peak``, ``extra = peak - base``.

    Args:
        device: the device the block runs on.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.kind = "unavailable"
        self.base = self.peak = math.nan

    @property
    def extra(self) -> float:
        return self.peak - self.base

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind, self.base = "cuda_allocated", torch.cuda.memory_allocated(self.device) / 2**20
        elif self.device.type == "cpu" and reset_rss_peak():
            self.kind, self.base = "process_rss", proc_status_kb("VmRSS") / 1024
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.kind == "cuda_allocated":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.kind == "process_rss":
            self.peak = proc_status_kb("VmHWM") / 1024


class CaseTimer:
    """Wall time of the adapter's call of every case of an :class:`~monai_tta.engines.AdaptiveEvaluator`: from
    :attr:`~monai_tta.engines.CaseEvents.ADAPT_STARTED` (the case is on the device) to ``FORWARD_COMPLETED``
    (``perf_counter``; on CUDA synchronised at both ends).

    Args:
        device: the evaluator's device.

    Attributes:
        times: milliseconds per case, in stream order (reset when the engine starts).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.times: list[float] = []
        self._start = 0.0

    def attach(self, engine: Any) -> None:
        """Register on ``engine``'s events."""
        from ignite.engine import Events
        from monai.engines.utils import IterationEvents

        from monai_tta.engines import CaseEvents

        engine.add_event_handler(Events.STARTED, lambda _: self.times.clear())
        engine.add_event_handler(CaseEvents.ADAPT_STARTED, self._started)
        engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._completed)

    def _started(self, _engine: Any) -> None:
        _sync(self.device)
        self._start = time.perf_counter()

    def _completed(self, _engine: Any) -> None:
        _sync(self.device)
        self.times.append((time.perf_counter() - self._start) * 1000.0)


def time_methods(
    methods: Sequence[str],
    network: nn.Module,
    image: torch.Tensor,
    device: torch.device,
    reps: int = 7,
    warmup: int = 2,
    seed: int = 0,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
    compile_net: bool = False,
    window: Mapping[str, Any] | None = None,
    memory_probes: int = 3,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Time every method on the same image, interleaved, then measure the peak memory of one call of each.

    Each method gets a fresh network copy and its bundle's adapter (continual; with ``window``, a volume, through the
    3D bundle's sliding window: :func:`~monai_tta.bench.methods.make_adapter`), called as an evaluator calls its
    inferer (``no_grad``, optional autocast) ``warmup`` times. Then ``reps`` rounds call every method once (the order
    rotated every round) and time each call (wall time, CUDA synchronised, and the process CPU time of all threads).
    Then, method after method, ``memory_probes`` one-call peaks (:class:`PeakMemory`, median; 0: none). On CUDA the
    first call is measured too and counts when larger (CUDA graphs allocate their pool in it).

    Returns:
        per method: ``median_ms``, ``mean_ms``, ``min_ms``, ``max_ms``, ``median_cpu_ms``, ``memory_kind``,
        ``peak_extra_mb``, ``peak_total_mb``; and the list of timed calls (``rep``, ``method``, ``time_ms``,
        ``cpu_ms``).
    """
    x = to_device(image, device, channels_last)
    size, first = int(image.shape[-1]), {}
    entries = {
        m: (prepare_copy(network, channels_last, compile_net), make_adapter(m, "continual", size, seed, window))
        for m in methods
    }

    def call(name: str) -> tuple[float, float]:
        net, adapter = entries[name]
        _sync(device)
        start, cpu = time.perf_counter(), time.process_time()
        with torch.no_grad(), torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext():
            adapter(x, net)
        _sync(device)
        return (time.perf_counter() - start) * 1000.0, (time.process_time() - cpu) * 1000.0

    for name in methods:
        with PeakMemory(device) if device.type == "cuda" and memory_probes else nullcontext() as mem:
            call(name)
        first[name] = mem
        for _ in range(warmup - 1):
            call(name)
    calls: list[dict[str, Any]] = []
    order = list(methods)
    for rep in range(reps):
        for name in order[rep % len(order) :] + order[: rep % len(order)]:
            ms, cpu_ms = call(name)
            calls.append({"rep": rep, "method": name, "time_ms": ms, "cpu_ms": cpu_ms})
    results: dict[str, dict[str, Any]] = {}
    for name in methods:
        times = [c["time_ms"] for c in calls if c["method"] == name]
        cpu = [c["cpu_ms"] for c in calls if c["method"] == name]
        results[name] = {"median_ms": float(np.median(times)), "mean_ms": float(np.mean(times))}
        results[name].update(
            min_ms=float(np.min(times)), max_ms=float(np.max(times)), median_cpu_ms=float(np.median(cpu))
        )
        peaks = []
        for _ in range(memory_probes):
            with PeakMemory(device) as mem:
                call(name)
            peaks.append((mem.extra, mem.peak))
        extra, total = (float(np.median([p[i] for p in peaks])) if peaks else math.nan for i in (0, 1))
        if first[name] is not None:  # CUDA graphs allocate their pool during the first call and keep it: count it
            extra, total = max(extra, first[name].extra), max(total, first[name].peak)
        kind = mem.kind if peaks else "not measured"
        results[name].update(memory_kind=kind, peak_extra_mb=extra, peak_total_mb=total)
    return results, calls
