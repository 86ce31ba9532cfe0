"""The output folder of a day/night run (:class:`~monai_tta.adapters.dyna.runner.DayNightRunner`).

Layout of a run's output folder::

    <output_dir>/checkpoint.pt           the run state, replaced atomically after each day, each night and every
                                         ``checkpoint_interval`` night iterations
    <output_dir>/day_store/manifest.json the list of stored day images (replaced atomically after each image)
    <output_dir>/day_store/items/*.pt    one file per day image: image, binarised prediction, day
    <output_dir>/cases.csv               one row per stream case, in stream order: its day, the day adapter's guard
                                         records (``safeguard_fallback``, ``safe_choice``, ...) and day Dice, or
                                         ``status=failed`` and the reason (replaced atomically after each day)
    <output_dir>/report.json             the final report (also returned by :meth:`DayNightRunner.run`)
    <output_dir>/report.md, report.png   tables and plot (``report.write_daynight_summary``, optional)
"""

from __future__ import annotations

__all__ = ["CHECKPOINT_NAME", "REPORT_NAME", "CASES_NAME", "STORE_NAME", "SUMMARY_NAME", "PLOT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"
REPORT_NAME = "report.json"
CASES_NAME = "cases.csv"
STORE_NAME = "day_store"
SUMMARY_NAME = "report.md"
PLOT_NAME = "report.png"
