"""Reports: per-case records, per-domain summaries, Markdown tables (``tables``) and plots (``plots``)."""

from __future__ import annotations

from monai_tta.reports.plots import STREAM_COLUMNS, plot_domain_dice, plot_overlay, plot_stream
from monai_tta.reports.tables import MEAN_DICE, bootstrap_ci, markdown_table, read_case_csv, summarize, write_case_csv

__all__ = [
    "MEAN_DICE",
    "summarize",
    "read_case_csv",
    "write_case_csv",
    "markdown_table",
    "plot_domain_dice",
    "plot_stream",
    "plot_overlay",
    "STREAM_COLUMNS",
    "bootstrap_ci",
]
