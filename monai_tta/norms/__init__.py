"""Normalisation for adaptation: the adaptive layer, the regimes (policy) and the statistics of a volume."""

from __future__ import annotations

from monai_tta.norms.layer import (
    AdaptiveBatchNorm,
    CaseStats,
    convert_norms,
    layer_settings,
    norm_layers,
    per_sample_stats,
    recording_stats,
    statistics_prior,
)
from monai_tta.norms.policy import NormPolicy, NormRegime, warmup_lambda
from monai_tta.norms.volume import captured_statistics, case_statistics, pooled_statistics

__all__ = [
    "AdaptiveBatchNorm",
    "CaseStats",
    "convert_norms",
    "norm_layers",
    "layer_settings",
    "per_sample_stats",
    "statistics_prior",
    "recording_stats",
    "NormRegime",
    "NormPolicy",
    "warmup_lambda",
    "case_statistics",
    "pooled_statistics",
    "captured_statistics",
]
