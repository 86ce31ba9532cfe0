"""Timing and memory probes of the benchmark: wall time of an adapter call, interleaved timing of several methods,
and peak memory of one call (CUDA allocator statistics on a GPU, the resident set of a separate process on a Linux
CPU)."""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import math
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from monai_tta.adapters.base import Adapter
from monai_tta.bench.data import prepare_copy, to_device
from monai_tta.bench.methods import make_adapter

__all__ = [
    "AMP",
    "CaseTimer",
    "amp_name",
    "PeakMemory",
    "reset_rss_peak",
    "fix_mmap_threshold",
    "call_context",
    "timed_call",
    "time_methods",
    "measure_memory",
    "memory_worker",
]

logger = logging.getLogger("monai_tta.bench")

#: ``--amp`` names -> the autocast dtype (``None``: no autocast).
AMP: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_name(amp: torch.dtype | None) -> str:
    """The ``--amp`` name of an autocast dtype."""
    return next(k for k, v in AMP.items() if v == amp)


def _proc_status_kb(field_name: str) -> float:
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
        _proc_status_kb("VmHWM")
    except OSError:
        return False
    return True


def fix_mmap_threshold(threshold: int = 128 * 1024) -> bool:
    """Fix glibc's mmap threshold (``mallopt(M_MMAP_THRESHOLD)``): larger blocks are mapped, and unmapped when freed."""
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
            self.kind, self.base = "process_rss", _proc_status_kb("VmRSS") / 1024
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.kind == "cuda_allocated":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.kind == "process_rss":
            self.peak = _proc_status_kb("VmHWM") / 1024


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


@contextmanager
def call_context(device: torch.device, amp: torch.dtype | None) -> Iterator[None]:
    """How an evaluator calls an inferer: under ``no_grad`` (the adapter enables gradients itself), optional AMP."""
    amp_ctx = torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()
    with torch.no_grad(), amp_ctx:
        yield


def timed_call(
    adapter: Adapter, x: torch.Tensor, net: nn.Module, device: torch.device, amp: torch.dtype | None
) -> tuple[torch.Tensor, float]:
    """Call ``adapter(x, net)`` as an evaluator does and time it (``perf_counter``; CUDA synchronised before and after).

    Returns:
        the logits and the wall time in milliseconds.
    """
    _sync(device)
    start = time.perf_counter()
    with call_context(device, amp):
        logits = adapter(x, net)
    _sync(device)
    return logits, (time.perf_counter() - start) * 1000.0


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
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Time every method on the same image, interleaved.

    Each method gets a fresh network copy and a continual adapter, and is called ``warmup`` times. Then ``reps``
    rounds call every method once (the order rotated every round) and time each call. With ``window`` (a volume)
    every method runs through :class:`~monai_tta.inferers.SlidingWindowAdapter` (see
    :func:`~monai_tta.bench.methods.make_adapter`).

    Each call's process CPU time (``time.process_time``, all threads) is recorded too: on a CPU shared with other
    jobs it measures the work of a call whatever the load (with one torch thread it is the wall time of an idle
    machine; with several, OpenMP threads that spin while waiting add to it).

    Returns:
        per method: ``median_ms``, ``mean_ms``, ``min_ms``, ``max_ms``, ``median_cpu_ms``; and the list of timed calls
        (``time_ms``, ``cpu_ms``).
    """
    x = to_device(image, device, channels_last)
    size = int(image.shape[-1])
    entries = {
        m: (prepare_copy(network, channels_last, compile_net), make_adapter(m, "continual", size, seed, window))
        for m in methods
    }
    for net, adapter in entries.values():
        for _ in range(warmup):
            timed_call(adapter, x, net, device, amp)
    calls: list[dict[str, Any]] = []
    order = list(methods)
    for rep in range(reps):
        for name in order[rep % len(order) :] + order[: rep % len(order)]:
            net, adapter = entries[name]
            cpu = time.process_time()
            _, ms = timed_call(adapter, x, net, device, amp)
            cpu_ms = (time.process_time() - cpu) * 1000.0
            calls.append({"rep": rep, "method": name, "time_ms": ms, "cpu_ms": cpu_ms})
    results: dict[str, dict[str, Any]] = {}
    for name in methods:
        times = [c["time_ms"] for c in calls if c["method"] == name]
        results[name] = {
            "median_ms": float(np.median(times)),
            "mean_ms": float(np.mean(times)),
            "min_ms": float(np.min(times)),
            "max_ms": float(np.max(times)),
            "median_cpu_ms": float(np.median([c["cpu_ms"] for c in calls if c["method"] == name])),
        }
    return results, calls


def _memory_probes(
    methods: Sequence[str],
    network: nn.Module,
    image: torch.Tensor,
    device: torch.device,
    probes: int = 3,
    warmup: int = 1,
    seed: int = 0,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
    window: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """In this process: per method (one after the other), warm-up calls, then ``probes`` one-call peaks (median).

    On CUDA the first warm-up call is measured too, and a method's figures are the larger of it and the median:
    CUDA graphs allocate their memory pool during the first call (the capture) and keep it for every later call.
    """
    x = to_device(image, device, channels_last)
    results: dict[str, dict[str, Any]] = {}
    for name in methods:
        net = prepare_copy(network, channels_last, False)
        adapter = make_adapter(name, "continual", int(image.shape[-1]), seed, window)
        first = None
        if device.type == "cuda" and warmup > 0:  # the first call, where CUDA graphs allocate their pool, is measured
            with PeakMemory(device) as first, call_context(device, amp):
                adapter(x, net)
        with call_context(device, amp):
            for _ in range(warmup - (first is not None)):
                adapter(x, net)
        values = []
        for _ in range(max(int(probes), 1)):
            with PeakMemory(device) as mem:
                with call_context(device, amp):
                    adapter(x, net)
            values.append((mem.extra, mem.peak))
        extra, total = float(np.median([v[0] for v in values])), float(np.median([v[1] for v in values]))
        if first is not None:  # CUDA graphs allocate their pool during the first call and keep it: count it
            extra, total = max(extra, first.extra), max(total, first.peak)
        results[name] = {"memory_kind": mem.kind, "peak_extra_mb": extra, "peak_total_mb": total}
        del net, adapter
    return results


def measure_memory(
    methods: Sequence[str],
    network: nn.Module,
    image: torch.Tensor,
    device: torch.device,
    probes: int = 3,
    seed: int = 0,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
    window: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Peak memory of one call of each method on ``image`` (median of ``probes``), see :class:`PeakMemory`.

    On CUDA the probes run in this process (``torch.cuda`` statistics count torch's tensors exactly). On a Linux CPU
    they run in a fresh Python process whose glibc mmap threshold is fixed at 128 KiB from the start, so that freed
    tensors go back to the system and the resident set follows the live tensors: in a process that has already run
    other methods, glibc's default (dynamic) threshold leaves freed blocks in the heap, and a peak would depend on
    what ran before. ``torch.compile`` is not applied to the probes. ``window``: as in :func:`time_methods`.

    Returns:
        per method: ``memory_kind``, ``peak_extra_mb``, ``peak_total_mb``.
    """
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return _memory_probes(
            methods, network, image, device, probes, seed=seed, amp=amp, channels_last=channels_last, window=window
        )
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.pt"
        result = Path(tmp) / "result.json"
        torch.save(
            {
                "network": network,
                "image": image.cpu(),
                "methods": list(methods),
                "probes": int(probes),
                "seed": int(seed),
                "amp": amp_name(amp),
                "channels_last": bool(channels_last),
                "window": None if window is None else dict(window),
                "threads": torch.get_num_threads(),
                "result": str(result),
            },
            spec,
        )
        code = "import sys; from monai_tta.bench.probes import memory_worker; memory_worker(sys.argv[1])"
        proc = subprocess.run([sys.executable, "-c", code, str(spec)], capture_output=True, text=True)
        if proc.returncode != 0 or not result.is_file():
            logger.warning(f"memory probe process failed ({proc.returncode}): {proc.stderr[-2000:]}")
            return {
                m: {"memory_kind": "unavailable", "peak_extra_mb": math.nan, "peak_total_mb": math.nan} for m in methods
            }
        return json.loads(result.read_text())


def memory_worker(spec_file: str) -> None:
    """Entry point of the memory-probe process started by :func:`measure_memory`."""
    fix_mmap_threshold()
    spec = torch.load(spec_file, weights_only=False)
    torch.set_num_threads(int(spec["threads"]))
    results = _memory_probes(
        spec["methods"],
        spec["network"],
        spec["image"],
        torch.device("cpu"),
        spec["probes"],
        seed=spec["seed"],
        amp=AMP[spec["amp"]],
        channels_last=spec["channels_last"],
        window=spec["window"],
    )
    Path(spec["result"]).write_text(json.dumps(results))
