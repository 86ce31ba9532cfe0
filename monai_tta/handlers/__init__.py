"""Event handlers for the adaptive evaluator."""

from __future__ import annotations

from monai_tta.handlers.case_report import CaseReport
from monai_tta.handlers.run_checkpoint import RunCheckpoint

__all__ = ["CaseReport", "RunCheckpoint"]
