"""The cost handler of the benchmark (:class:`~monai_tta.handlers.CaseCost`) on a tiny engine, and its memory probe."""

from __future__ import annotations

import time

import pytest
import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents

from monai_tta.engines import CaseEvents
from monai_tta.handlers import CaseCost, PeakMemory
from monai_tta.handlers.case_cost import reset_rss_peak

MIB = 2**20


def tiny_engine(work):
    """An engine whose step fires the adaptive evaluator's two events around ``work(batch)``."""

    def step(engine, batch):
        engine.fire_event(CaseEvents.ADAPT_STARTED)
        work(batch)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)

    engine = Engine(step)
    engine.register_events(*CaseEvents, *IterationEvents)
    return engine


def test_case_cost_times_only_the_call():
    """One row per case; the time is the call's (a sleep: wall time, no CPU time); the work before is not in it."""
    engine = tiny_engine(lambda seconds: time.sleep(seconds))
    engine.add_event_handler(CaseEvents.ADAPT_STARTED, lambda _: time.sleep(0.05))  # before the clocks start
    cost = CaseCost("cpu")
    cost.attach(engine)
    engine.run([0.02, 0.04], max_epochs=1)
    assert [sorted(r) for r in cost.rows] == [["cpu_ms", "time_ms"]] * 2
    assert 20.0 <= cost.rows[0]["time_ms"] < 45.0 and 40.0 <= cost.rows[1]["time_ms"] < 65.0
    assert all(r["cpu_ms"] < 20.0 for r in cost.rows)  # sleeping takes no CPU time
    assert cost.memory_kind == "not measured"
    engine.run([0.0], max_epochs=1)  # a new run starts a new list
    assert len(cost.rows) == 1


@pytest.mark.skipif(not reset_rss_peak(), reason="needs Linux /proc/self/clear_refs")
def test_case_cost_peak_memory_of_each_call():
    """``memory_every=2``: cases 0 and 2 probed, the peak of the call above what was in use before it."""

    def work(mib):
        x = torch.ones(mib * MIB // 4)
        del x

    cost = CaseCost("cpu", memory_every=2)
    engine = tiny_engine(work)
    cost.attach(engine)
    engine.run([64, 64, 0], max_epochs=1)
    assert cost.memory_kind == "process_rss"
    assert ["peak_extra_mb" in r for r in cost.rows] == [True, False, True]
    assert 60.0 <= cost.rows[0]["peak_extra_mb"] <= 90.0 and cost.rows[2]["peak_extra_mb"] < 20.0
    assert cost.rows[0]["peak_total_mb"] > cost.rows[0]["peak_extra_mb"]
    with pytest.raises(ValueError, match="memory_every"):
        CaseCost("cpu", memory_every=-1)


@pytest.mark.skipif(not reset_rss_peak(), reason="needs Linux /proc/self/clear_refs")
def test_peak_memory_sees_torch_allocations():
    with PeakMemory(torch.device("cpu")) as mem:
        x = torch.ones(16 * MIB // 4 * 4)  # 64 MiB, touched
        del x
    assert mem.kind == "process_rss"
    assert 60.0 <= mem.extra <= 90.0


def test_case_cost_on_the_adaptive_evaluator():
    """Attached to an :class:`~monai_tta.engines.AdaptiveEvaluator`: one row per case, in stream order."""
    from monai_tta.adapters import SourceOnly
    from monai_tta.data import CaseStream, GuardedDataset
    from monai_tta.engines import AdaptiveEvaluator

    cases = [{"image": torch.rand(1, 8, 8), "case_id": f"c{i}", "domain": "a"} for i in range(3)]
    cost = CaseCost("cpu")
    net = torch.nn.Conv2d(1, 2, 1)
    evaluator = AdaptiveEvaluator("cpu", CaseStream(GuardedDataset(cases)), net, SourceOnly(setting="domain"))
    cost.attach(evaluator)
    evaluator.run()
    assert len(cost.rows) == 3 and all(r["time_ms"] > 0 for r in cost.rows)
