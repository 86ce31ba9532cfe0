"""The cost of each case's adapter call as a handler of the adaptive evaluator: wall time, process CPU time and peak
memory (CUDA allocator statistics on a GPU, the process's resident set on a Linux CPU)."""

from __future__ import annotations

import ctypes
import gc
import math
import time
from typing import TYPE_CHECKING, Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils import IgniteInfo, min_version, optional_import

from monai_tta.engines import CaseEvents

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["CaseCost", "PeakMemory", "proc_status_kb", "reset_rss_peak", "fix_mmap_threshold", "rss_mib"]


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


def rss_mib() -> float:
    """The resident set size of this process in MiB (``nan`` where ``/proc`` is missing)."""
    try:
        return proc_status_kb("VmRSS") / 1024.0
    except OSError:
        return math.nan


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

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.kind = "unavailable"
        self.base = self.peak = math.nan

    @property
    def extra(self) -> float:
        return self.peak - self.base

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # no empty_cache: the block would pay for new cudaMalloc calls
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


class CaseCost:
    """The cost of the adapter's call of every case of an :class:`~monai_tta.engines.AdaptiveEvaluator`, from
    :attr:`~monai_tta.engines.CaseEvents.ADAPT_STARTED` (the case is on the device) to ``FORWARD_COMPLETED``.

    Per case: ``time_ms`` (``time.perf_counter``; on CUDA synchronised at both ends), ``cpu_ms`` (``time.process_time``:
    every thread of the process) and, on the cases probed for memory, ``peak_extra_mb`` / ``peak_total_mb``
    (:class:`PeakMemory` around the call: the peak minus the memory in use just before it, and the peak itself). The
    probe is set up before the clocks start and read after they stop, but it still slows the call it measures (on a
    CPU it returns free heap memory to the system, and the call faults pages back in): time the cases without a
    probe. Every case is recorded, the first ones (one-off work: optimizer, graphs, lazy buffers) too: leaving out
    warm-up cases is the reader's choice.

    Args:
        device: the evaluator's device.
        memory_every: probe the peak memory of cases 0, k, 2k, ... (k = ``memory_every``; 0: none).

    Raises:
        ValueError: if ``memory_every`` is negative.

    Attributes:
        rows: one dict per case, in stream order (cleared when the engine starts).
        memory_kind: what the memory figures measure (``"cuda_allocated"``, ``"process_rss"``, ``"unavailable"``;
            ``"not measured"`` without a probe).
    """

    def __init__(self, device: torch.device | str, memory_every: int = 0) -> None:
        if memory_every < 0:
            raise ValueError(f"memory_every={memory_every}: expected 0 (no memory probe) or a number of cases >= 1.")
        self.device = torch.device(device)
        self.memory_every = int(memory_every)
        self.memory_kind = "not measured"
        self.rows: list[dict[str, float]] = []
        self._probe: PeakMemory | None = None
        self._start = self._cpu = 0.0

    def attach(self, engine: Engine) -> None:
        """Register on ``engine``'s events: ``STARTED``, ``ADAPT_STARTED`` and ``FORWARD_COMPLETED``."""
        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(CaseEvents.ADAPT_STARTED, self.started)
        engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self.completed)

    def started(self, _engine: Engine | None = None) -> None:
        """The adapter's call starts: set up the memory probe (on its cases), then start the clocks."""
        if self.memory_every and len(self.rows) % self.memory_every == 0:
            self._probe = PeakMemory(self.device).__enter__()
        _sync(self.device)
        self._start, self._cpu = time.perf_counter(), time.process_time()

    def completed(self, _engine: Engine | None = None) -> None:
        """The adapter's call is done: stop the clocks, then read the memory probe; append the case's row."""
        _sync(self.device)
        time_ms, cpu_ms = (time.perf_counter() - self._start) * 1000.0, (time.process_time() - self._cpu) * 1000.0
        row = {"time_ms": time_ms, "cpu_ms": cpu_ms}
        if self._probe is not None:
            self._probe.__exit__(None, None, None)
            row.update(peak_extra_mb=self._probe.extra, peak_total_mb=self._probe.peak)
            self.memory_kind, self._probe = self._probe.kind, None
        self.rows.append(row)
