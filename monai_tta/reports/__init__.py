"""Reports: per-case records, per-domain summaries, Markdown tables (``tables``) and plots (``plots``)."""

from __future__ import annotations

from monai_tta.reports.plots import plot_domain_dice
from monai_tta.reports.tables import MEAN_DICE, bootstrap_ci, markdown_table, read_case_csv, summarize, write_case_csv

__all__ = [
    "MEAN_DICE",
    "summarize",
    "read_case_csv",
    "write_case_csv",
    "markdown_table",
    "plot_domain_dice",
    "bootstrap_ci",
]
