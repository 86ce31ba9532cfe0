"""Event handlers for the adaptive evaluator."""

from __future__ import annotations

from monai_tta.handlers.case_report import CaseReport

__all__ = ["CaseReport"]
