"""The adaptive evaluator: a MONAI ``SupervisedEvaluator`` that runs an adapter over a stream of cases."""

from __future__ import annotations

from monai_tta.engines.evaluator import ADAPT_KEY, AdaptiveEvaluator, CaseEvents, batch_domain, numeric_stats

__all__ = ["AdaptiveEvaluator", "ADAPT_KEY", "batch_domain", "numeric_stats", "CaseEvents"]
