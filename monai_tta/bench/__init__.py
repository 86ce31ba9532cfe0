"""Benchmark of the adaptation methods: Dice per domain and setting, and the cost per case of each method.

Run ``python -m monai_tta.bench --help``. Every Dice run is the method's bundle evaluation (its ``AdaptiveEvaluator``
built from its configs with the setting and the variant as overrides, its ``CaseReport`` row and the
:class:`~monai_tta.handlers.CaseCost` handler: the time and the peak memory of each case's adapter call). One module
per role: ``cli`` (command line), ``methods`` (which bundle and overrides each method is), ``data`` (data, network
and device from the bundles), ``stats`` (the case report's means per setting, intervals, targets), ``runner`` (the
loop, the cost per method), ``outputs`` (result files through :mod:`monai_tta.reports`), ``soak`` and ``ranks`` (the
long stream, cases per second against ranks).
"""

from __future__ import annotations

from monai_tta.bench.cli import main, parse_args
from monai_tta.bench.methods import METHODS, SETTINGS, STREAM, make_adapter, method_parser
from monai_tta.bench.runner import cost_per_method, run_benchmark, run_cases
from monai_tta.bench.stats import check_targets, summarize_runs

__all__ = ["METHODS", "SETTINGS", "STREAM", "make_adapter", "method_parser", "cost_per_method", "run_benchmark"]
__all__ += ["run_cases", "check_targets", "summarize_runs", "parse_args", "main"]
