"""Interleaved timing of two or more arms (the issue-18 cost tools): the arms alternate, their order flips every
round, the first round is dropped, and each arm's median is returned in milliseconds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

__all__ = ["interleaved_medians", "ratio_line"]


def interleaved_medians(arms: Mapping[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """``{arm: median ms}`` over ``reps`` rounds of calling every arm once (after one dropped warm-up round)."""
    times: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(reps + 1):
        for name in list(arms) if r % 2 == 0 else list(reversed(list(arms))):
            start = time.perf_counter()
            arms[name]()
            if r > 0:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1000 for name, values in times.items()}


def ratio_line(what: str, reps: int, medians: Mapping[str, float]) -> str:
    """``"<what>, <reps> rounds: <arm> <ms> ms, ... (<last / first>x)"``: the medians and the last arm's ratio to the
    first's."""
    values = list(medians.values())
    arms = ", ".join(f"{name} {ms:.1f} ms" for name, ms in medians.items())
    return f"{what}, {reps} rounds: {arms} ({values[-1] / values[0]:.2f}x)"
