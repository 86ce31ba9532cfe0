"""Workflows that run adapters over streams of cases."""

from __future__ import annotations

from monai_tta.engines.day_store import DayImageStore, night_schedule
from monai_tta.engines.daynight import DayNightRunner, atomic_save, atomic_write_json, case_dice
from monai_tta.engines.daynight_report import write_daynight_summary
from monai_tta.engines.evaluator import ADAPT_KEY, AdaptiveEvaluator, CaseEvents, batch_domain, numeric_stats

__all__ = [
    "AdaptiveEvaluator",
    "ADAPT_KEY",
    "batch_domain",
    "numeric_stats",
    "CaseEvents",
    "DayImageStore",
    "DayNightRunner",
    "atomic_save",
    "atomic_write_json",
    "case_dice",
    "night_schedule",
    "write_daynight_summary",
]
