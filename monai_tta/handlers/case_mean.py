"""The evaluator's key metric read from the per-case rows: Dice is computed once, by the case report."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from monai.utils import IgniteInfo, min_version, optional_import

from monai_tta.data.keys import CaseStatus
from monai_tta.handlers.case_report import CaseReport
from monai_tta.reports import MEAN_DICE

Metric, _ = optional_import("ignite.metrics", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Metric", as_type="base")
idist, _ = optional_import("ignite", IgniteInfo.OPT_IMPORT_VERSION, min_version, "distributed")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["CaseMean"]


class CaseMean(Metric):
    """Mean of a column of the scored rows of a :class:`~monai_tta.handlers.CaseReport` over the epoch, across
    ranks: the evaluator's key metric (``key_val_metric``) without computing the score again.

    It reads the report's rows at the end of the epoch, so it does not depend on the order of the handlers, and a
    resumed run (:class:`~monai_tta.handlers.RunCheckpoint` restores the rows) covers every case. Failed cases and
    rows without the column are left out; ``nan`` when no row has it.

    Args:
        report: the run's case report.
        key: the column (default ``dice_mean``: the mean Dice over the channels, in percent).
    """

    def __init__(self, report: CaseReport, key: str = MEAN_DICE) -> None:
        self.report = report
        self.key = key
        super().__init__(output_transform=lambda output: output)

    def reset(self) -> None:
        """Nothing to reset: the report's rows are the state."""

    def update(self, output: Any) -> None:
        """Nothing to accumulate: the report's rows are the state."""

    def compute(self) -> float:
        """The mean of ``key`` over the scored rows of every rank."""
        values = [
            float(row[self.key])
            for row in self.report.rows
            if row.get(CaseStatus.KEY.value) != CaseStatus.FAILED.value and isinstance(row.get(self.key), float)
        ]
        total = torch.tensor([sum(values), len(values)], dtype=torch.float64)
        total = idist.all_reduce(total) if idist.get_world_size() > 1 else total
        return float(total[0] / total[1]) if total[1] > 0 else math.nan
