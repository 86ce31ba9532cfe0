"""Reports: per-case records, per-domain summaries, Markdown tables (``tables``) and plots (``plots``).

The one home of table formatting and of matplotlib: the benchmark, the demo, the day/night runner and the case report
all write their tables and figures through it.
"""

from __future__ import annotations

from monai_tta.reports.plots import (
    STREAM_COLUMNS,
    plot_cost_ratios,
    plot_day_night,
    plot_domain_dice,
    plot_overlay,
    plot_stream_dice,
    plot_stream_stats,
)
from monai_tta.reports.tables import (
    MEAN_DICE,
    bootstrap_ci,
    format_cell,
    format_interval,
    format_number,
    markdown_table,
    ratio,
    read_case_csv,
    stratified_ci,
    summarize,
    write_case_csv,
)

__all__ = [
    "MEAN_DICE",
    "summarize",
    "read_case_csv",
    "write_case_csv",
    "markdown_table",
    "format_number",
    "format_cell",
    "format_interval",
    "ratio",
    "bootstrap_ci",
    "stratified_ci",
    "plot_domain_dice",
    "plot_stream_dice",
    "plot_stream_stats",
    "plot_overlay",
    "STREAM_COLUMNS",
    "plot_cost_ratios",
    "plot_day_night",
]
