"""GraTa: gradient alignment test-time adaptation, with its CUDA-graph replay."""

from __future__ import annotations

from monai_tta.adapters.grata.adapter import GRATA_MODES, GRATA_VIEW_MODES, GraTa, cosine_lr
from monai_tta.adapters.grata.graphs import CapturedCall

__all__ = [
    "GraTa",
    "cosine_lr",
    "GRATA_MODES",
    "GRATA_VIEW_MODES",
    "CapturedCall",
]
