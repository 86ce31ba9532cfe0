"""Event handlers for the adaptive evaluator."""

from __future__ import annotations

from monai_tta.handlers.case_cost import CaseCost, PeakMemory
from monai_tta.handlers.case_mean import CaseMean
from monai_tta.handlers.case_report import REASON, SUMMARY_FILES, CaseReport, row_stats
from monai_tta.handlers.overlays import OverlaySaver
from monai_tta.handlers.progress import PROGRESS_MODES, Progress
from monai_tta.handlers.run_checkpoint import RunCheckpoint

__all__ = [
    "CaseCost",
    "PeakMemory",
    "CaseMean",
    "CaseReport",
    "REASON",
    "SUMMARY_FILES",
    "row_stats",
    "OverlaySaver",
    "Progress",
    "PROGRESS_MODES",
    "RunCheckpoint",
]
