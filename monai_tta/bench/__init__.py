"""Benchmark of the adaptation methods: Dice per domain and setting, and the cost per case of each method.

Run ``python -m monai_tta.bench --help``. Every Dice run is the method's bundle evaluation (its ``AdaptiveEvaluator``
built from its configs with the setting and the variant as overrides). One module per role: ``cli`` (command line),
``methods`` (which bundle and overrides each method is), ``data`` (data, network and device from the bundles),
``probes`` (case timer, timing phase, peak memory), ``stats`` (summaries, bootstrap intervals, targets), ``runner``
(orchestration), ``outputs`` (result files). Tables and plots come from :mod:`monai_tta.reports`.
"""

from __future__ import annotations

from monai_tta.bench.cli import main, parse_args
from monai_tta.bench.data import prepare
from monai_tta.bench.methods import (
    METHODS,
    SETTINGS,
    STREAM,
    MethodSpec,
    available_methods,
    make_adapter,
    method_parser,
)
from monai_tta.bench.outputs import write_outputs
from monai_tta.bench.probes import CaseTimer, PeakMemory, measure_memory, time_methods
from monai_tta.bench.runner import run_benchmark, run_cases, run_dims
from monai_tta.bench.stats import check_targets, summarize_runs

__all__ = [
    "METHODS",
    "SETTINGS",
    "STREAM",
    "MethodSpec",
    "PeakMemory",
    "available_methods",
    "make_adapter",
    "parse_args",
    "prepare",
    "method_parser",
    "CaseTimer",
    "run_dims",
    "run_cases",
    "time_methods",
    "measure_memory",
    "summarize_runs",
    "check_targets",
    "write_outputs",
    "run_benchmark",
    "main",
]
