"""Workflows that run adapters over streams of cases."""

from __future__ import annotations

from monai_tta.engines.evaluator import ADAPT_KEY, AdaptiveEvaluator, batch_domain, stats_to_batch

__all__ = ["AdaptiveEvaluator", "ADAPT_KEY", "batch_domain", "stats_to_batch"]
