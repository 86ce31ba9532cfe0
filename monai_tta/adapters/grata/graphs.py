"""CUDA graphs for an adapter's fixed-shape work: capture once per input shape, then replay.

At batch size 1 a segmentation network's kernels are short, and an adaptation step launches thousands of them (a
GraTa update on ResUNet-34: about 2,000): on a GPU the host's launch overhead, not the device, sets the pace. A CUDA
graph records the kernels of one call and replays them with one launch. What it needs: the same shapes every call
(inputs are copied into fixed buffers), no host synchronisation and no host-side random decision inside the captured
function, and memory that stays allocated between calls (the graph's private pool).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["CapturedCall"]


class CapturedCall:
    """``fn(*tensors) -> tuple of tensors``, captured into a CUDA graph on first call and replayed afterwards.

    A new capture happens when the shapes, dtypes or device of the inputs change. Inputs on a non-CUDA device, or
    ``capture=False``, run ``fn`` directly (through the same input buffers, so both paths behave alike). The outputs
    are the graph's own buffers: the next call overwrites them, so consume or clone them before calling again.

    Args:
        fn: function of tensors returning a tuple (or list) of tensors. It must not synchronise with the host, must
            not take host-side decisions that depend on the inputs' values, and must leave any state it changes as
            it found it: the warm-up runs it ``warmup`` times (plus the capture) before the first real replay.
        warmup: eager calls on a side stream before the capture (cuDNN and the allocator settle there).
        capture: capture on CUDA inputs (``False``: always eager).
        share_pool_with: another :class:`CapturedCall` whose graph's memory pool this one's capture uses. Safe, and
            it saves the memory of a second pool, when the two are always replayed in the order they were captured
            and never concurrently (e.g. an update, then a prediction, for every case).

    Raises:
        ValueError: if ``warmup`` is negative.
    """

    def __init__(
        self,
        fn: Callable[..., Sequence[torch.Tensor]],
        warmup: int = 2,
        capture: bool = True,
        share_pool_with: CapturedCall | None = None,
    ) -> None:
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}.")
        self.fn = fn
        self.warmup = int(warmup)
        self.capture = bool(capture)
        self.share_pool_with = share_pool_with
        self.graph: torch.cuda.CUDAGraph | None = None
        self.captures = 0
        self._key: tuple[Any, ...] | None = None
        self._inputs: list[torch.Tensor] = []
        self._outputs: tuple[torch.Tensor, ...] = ()

    @staticmethod
    def _signature(inputs: Sequence[torch.Tensor]) -> tuple[Any, ...]:
        return tuple((tuple(x.shape), x.dtype, x.device, x.stride()) for x in inputs)

    def _record(self, inputs: Sequence[torch.Tensor]) -> None:
        self._inputs = [x.detach().clone() for x in inputs]
        stream = torch.cuda.Stream(device=inputs[0].device)
        stream.wait_stream(torch.cuda.current_stream(inputs[0].device))
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self.fn(*self._inputs)
        torch.cuda.current_stream(inputs[0].device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        other = self.share_pool_with.graph if self.share_pool_with is not None else None
        with torch.cuda.graph(graph, pool=other.pool() if other is not None else None):
            self._outputs = tuple(self.fn(*self._inputs))
        self.graph = graph
        self.captures += 1

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run ``fn`` on ``inputs`` (replaying the graph when one is captured for their signature)."""
        if not self.capture or not inputs or inputs[0].device.type != "cuda":
            return tuple(self.fn(*inputs))
        key = self._signature(inputs)
        if key != self._key:
            self._key = None
            self._record(inputs)
            self._key = key
        for buffer, x in zip(self._inputs, inputs):
            buffer.copy_(x)
        assert self.graph is not None
        self.graph.replay()
        return self._outputs
