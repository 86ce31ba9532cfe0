"""Event handlers for the adaptive evaluator."""

from __future__ import annotations

from monai_tta.handlers.case_report import SUMMARY_FILES, CaseReport
from monai_tta.handlers.overlays import OverlaySaver
from monai_tta.handlers.progress import PROGRESS_MODES, Progress
from monai_tta.handlers.run_checkpoint import RunCheckpoint

__all__ = ["CaseReport", "SUMMARY_FILES", "OverlaySaver", "Progress", "PROGRESS_MODES", "RunCheckpoint"]
