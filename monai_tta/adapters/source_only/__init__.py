"""Source-only inference and norm-statistics adaptation (no parameter update)."""

from __future__ import annotations

from monai_tta.adapters.source_only.adapter import NormAdapt, SourceOnly

__all__ = [
    "NormAdapt",
    "SourceOnly",
]
