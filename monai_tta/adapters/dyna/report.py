"""DyNA's report: the per-day, held-out and per-group tables and the plot of a day/night run's ``report.json``."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_tta.adapters.dyna.keys import DayNightKeys
from monai_tta.adapters.dyna.layout import CASES_NAME, PLOT_NAME, REPORT_NAME, SUMMARY_NAME
from monai_tta.adapters.stats import StatKeys
from monai_tta.data.guarded import is_failure
from monai_tta.data.keys import CaseStatus, DataKeys
from monai_tta.io import atomic_write_text
from monai_tta.reports import format_cell, markdown_table, plot_day_night

K = DayNightKeys  # short name of the keys in this module
logger = logging.getLogger(__name__)

__all__ = ["anchor_counts", "build_daynight_report", "guard_columns", "write_daynight_summary"]


#: the day adapter's guard records copied into a case's row of ``cases.csv`` when present (issue 18: each case's row
#: says which candidate ``safe`` chose, and whether the safeguard fell back).
_GUARD_COLUMNS = (
    StatKeys.SAFEGUARD_FALLBACK,
    StatKeys.SAFE_CHOICE,
    StatKeys.SAFE_PRIOR,
    StatKeys.SAFE_SOURCE,
    StatKeys.SAFE_STEP,
    StatKeys.SAFE_ANCHOR,
    StatKeys.SAFE_ANCHOR_MARGIN,
)


def guard_columns(stats: Mapping[str, Any]) -> dict[str, Any]:
    """The guard records of a day adapter's ``last_stats`` that a case's row carries (plain ``str``, ``bool`` or
    ``float`` values; absent keys are left out, so a run without guards keeps its columns)."""
    row: dict[str, Any] = {}
    for key in _GUARD_COLUMNS:
        value = stats.get(key.value)
        if value is None:
            continue
        row[key.value] = value if isinstance(value, (str, bool)) else float(value)
    return row


def anchor_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[int]]:
    """Per domain of a day's rows checked by the source anchor: ``[n, m]``, the cases where the original source
    model's prediction was reported (``n``) among those checked (``m``)."""
    counts: dict[str, list[int]] = {}
    for row in rows:
        if row.get(StatKeys.SAFE_ANCHOR.value) is None:
            continue
        count = counts.setdefault(str(row.get(DataKeys.DOMAIN.value, "all")), [0, 0])
        count[0] += int(bool(row[StatKeys.SAFE_ANCHOR.value]))
        count[1] += 1
    return counts


def warn_anchored(day: int, counts: Mapping[str, Sequence[int]]) -> None:
    """Log one warning per domain where the source anchor reported the original source model on most of a day's
    cases (issue 18: a run says when adaptation was refused on most cases of a domain)."""
    for group, (n, m) in counts.items():
        if 2 * n > m:
            logger.warning(
                f"DyNA day {day + 1}: the original source model was reported on {n} of {m} cases of {group!r}: the day "
                "model (the global student) showed no clear gain over it under the safe signal (source_anchor)."
            )


def _percent(value: Any) -> float | None:
    return None if value is None else 100.0 * float(value)


def build_daynight_report(
    ckpt: Mapping[str, Any],
    n_stream: int,
    heldout_cases: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> dict[str, Any]:
    """The report of a day/night run (``report.json``) from its checkpoint: counts, the mean day Dice, the held-out
    Dice before the first day and after the last night, per group when the run has groups, the held-out cases that
    failed to load, every day's record and the run's configuration.

    Args:
        ckpt: the run state (:class:`~monai_tta.adapters.dyna.runner.DayNightRunner`'s checkpoint).
        n_stream: the number of stream cases.
        heldout_cases: the held-out cases, a sequence or ``{group: cases}``, or ``None``.
    """
    records = ckpt["records"]
    labelled = [(r[K.DAY_DICE.value], r["n_labelled"]) for r in records if r[K.DAY_DICE.value] is not None]
    n_lab = sum(c for _, c in labelled)
    nights = [r for r in records if K.NIGHT_ITERATIONS.value in r]
    heldout = [r.get(K.HELDOUT_DICE.value) for r in nights]
    report = {
        K.N_IMAGES.value: n_stream,
        K.N_FAILED.value: sum(
            r.get(CaseStatus.KEY.value) == CaseStatus.FAILED.value for r in ckpt.get(K.CASES.value, [])
        ),
        K.N_DAYS.value: len(records),
        K.N_NIGHTS.value: len(nights),
        K.MEAN_DAY_DICE.value: sum(d * c for d, c in labelled) / n_lab if n_lab else None,
        K.INITIAL_HELDOUT_DICE.value: ckpt[K.INITIAL_HELDOUT_DICE.value],
        K.FINAL_HELDOUT_DICE.value: heldout[-1] if heldout else None,
    }
    # per-group fields only when the run has groups (a plain run's report keeps its keys)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for r in records:
        for g, d in r.get(K.DAY_DICE_PER_GROUP.value, {}).items():
            c = r[K.N_LABELLED_PER_GROUP.value][g]
            sums[g], counts[g] = sums.get(g, 0.0) + d * c, counts.get(g, 0) + c
    if counts:
        report[K.DAY_DICE_PER_GROUP.value] = {g: sums[g] / counts[g] for g in counts}
    anchored: dict[str, list[int]] = {}
    for r in records:
        for g, (n, m) in r.get(K.SOURCE_ANCHOR_PER_GROUP.value, {}).items():
            total = anchored.setdefault(g, [0, 0])
            total[0], total[1] = total[0] + n, total[1] + m
    if anchored:
        report[K.SOURCE_ANCHOR_PER_GROUP.value] = anchored
    if ckpt.get(K.INITIAL_HELDOUT_DICE_PER_GROUP.value) is not None:
        report[K.INITIAL_HELDOUT_DICE_PER_GROUP.value] = ckpt[K.INITIAL_HELDOUT_DICE_PER_GROUP.value]
    if nights and K.HELDOUT_DICE_PER_GROUP.value in nights[-1]:
        report[K.FINAL_HELDOUT_DICE_PER_GROUP.value] = nights[-1][K.HELDOUT_DICE_PER_GROUP.value]
    groups = heldout_cases.values() if isinstance(heldout_cases, Mapping) else [heldout_cases or []]
    bad = [c for cases in groups for c in cases if is_failure(c)]
    if bad:  # held-out cases that could not be loaded, left out of every held-out Dice
        report[K.HELDOUT_FAILED.value] = [{k: str(v) for k, v in c.items()} for c in bad]
    report[K.DAYS.value] = records
    report[K.CONFIG.value] = ckpt[K.CONFIG.value]
    return report


def write_daynight_summary(
    report: Mapping[str, Any] | str | os.PathLike, output_dir: str | os.PathLike | None = None, title: str = "DyNA"
) -> dict[str, Path]:
    """Write a day/night report as Markdown tables (``report.md``) and a plot (``report.png``), Dice in percent.

    The tables: one row per day (its images, the Dice of the day's predictions, the night's iterations, loss and
    confident fraction, the held-out Dice of the global student after the night); when the report has groups (e.g.
    target domains), the held-out Dice per group before the first day and after each night, and the day Dice per
    group. Days and nights are numbered from 1 (night ``k`` follows day ``k``).

    Args:
        report: the report returned by :meth:`DayNightRunner.run`, or the path of its ``report.json``.
        output_dir: where to write; default: the folder of ``report`` when it is a path.
        title: heading of the Markdown file and of the plot.

    Returns:
        ``{"json": ..., "markdown": ..., "plot": ...}`` paths (``"json"`` only when ``report`` was a path or the
        folder holds a ``report.json``).

    Raises:
        ValueError: if no ``output_dir`` is given for a report passed as a mapping.
    """
    if isinstance(report, (str, os.PathLike)):
        path = Path(report)
        output_dir = path.parent if output_dir is None else output_dir
        report = json.loads(path.read_text())
    if output_dir is None:
        raise ValueError("output_dir is required when the report is given as a mapping.")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    days = list(report[K.DAYS.value])
    config = report.get(K.CONFIG.value, {})

    n_failed = int(report.get(K.N_FAILED.value) or 0)
    per_day = {}
    for r in days:
        per_day[f"day {r[K.DAY.value] + 1}"] = {
            "stream images": f"{r[K.START.value]}-{r[K.END.value] - 1}",
            **({"failed cases": r.get(K.N_FAILED.value, 0)} if n_failed else {}),
            "day Dice": _percent(r.get(K.DAY_DICE.value)),
            "night iterations": r.get(K.NIGHT_ITERATIONS.value),
            "night loss": r.get(K.NIGHT_LOSS.value),
            "confident fraction": r.get(StatKeys.MASK_FRACTION.value),
            "held-out Dice after the night": _percent(r.get(K.HELDOUT_DICE.value)),
        }
    columns = list(next(iter(per_day.values()))) if per_day else []
    lines = [
        f"# {title}: day/night report",
        "",
        f"Stream of {report[K.N_IMAGES.value]} images in {report[K.N_DAYS.value]} days "
        f"({config.get('images_per_day')} images per day), {report[K.N_NIGHTS.value]} nights "
        f"({config.get('night_epochs')} epochs, batch {config.get('night_batch_size')}, night data "
        f"'{config.get('night_data')}'). Dice in %, mean over the output channels of each case, averaged over cases. "
        "The day Dice scores the predictions made during the day (VPTTA on the day model); the held-out Dice scores "
        "the global student (no adaptation) on the held-out cases.",
        "",
        "## Per day",
        "",
        markdown_table(per_day, columns, "day", formatter=format_cell) if per_day else "(no day)",
        "",
        f"Mean day Dice over the stream: {format_cell(_percent(report.get(K.MEAN_DAY_DICE.value)))}. "
        f"Held-out Dice of the initial model: {format_cell(_percent(report.get(K.INITIAL_HELDOUT_DICE.value)))}, "
        f"after the last night: {format_cell(_percent(report.get(K.FINAL_HELDOUT_DICE.value)))}.",
    ]
    if n_failed or report.get(K.HELDOUT_FAILED.value):
        lines += [
            "",
            f"{n_failed} stream cases and {len(report.get(K.HELDOUT_FAILED.value) or [])} held-out cases could not "
            "be used (unreadable, or failing the input checks): never stored nor trained on; their reasons are in "
            f"`{CASES_NAME}` and `{REPORT_NAME}`.",
        ]
    if report.get(K.SOURCE_ANCHOR_PER_GROUP.value):
        per_group = ", ".join(f"{g} {n} of {m}" for g, (n, m) in report[K.SOURCE_ANCHOR_PER_GROUP.value].items())
        lines += [
            "",
            "Source anchor (days after a night): the original source model's prediction was reported instead of the "
            f"day model's on {per_group} checked cases.",
        ]
    heldout_groups: dict[str, dict[str, float | None]] = {}
    if report.get(K.INITIAL_HELDOUT_DICE_PER_GROUP.value) is not None:
        heldout_groups["initial model"] = dict(report[K.INITIAL_HELDOUT_DICE_PER_GROUP.value])
        heldout_groups["initial model"]["mean"] = report.get(K.INITIAL_HELDOUT_DICE.value)
        for r in days:
            if K.HELDOUT_DICE_PER_GROUP.value in r:
                row = dict(r[K.HELDOUT_DICE_PER_GROUP.value])
                row["mean"] = r.get(K.HELDOUT_DICE.value)
                heldout_groups[f"after night {r[K.DAY.value] + 1}"] = row
        groups = list(report[K.INITIAL_HELDOUT_DICE_PER_GROUP.value])
        table = {k: {g: _percent(v) for g, v in row.items()} for k, row in heldout_groups.items()}
        lines += [
            "",
            "## Held-out Dice per group",
            "",
            "Global student on the held-out cases of each group; 'mean' is the mean over groups.",
            "",
            markdown_table(table, [*groups, "mean"], "model", formatter=format_cell),
        ]
    if report.get(K.DAY_DICE_PER_GROUP.value):
        stream_groups = list(report[K.DAY_DICE_PER_GROUP.value])
        table = {}
        for r in days:
            row = {g: _percent(v) for g, v in r.get(K.DAY_DICE_PER_GROUP.value, {}).items()}
            row["all"] = _percent(r.get(K.DAY_DICE.value))
            table[f"day {r[K.DAY.value] + 1}"] = row
        table["whole stream"] = {g: _percent(v) for g, v in report[K.DAY_DICE_PER_GROUP.value].items()}
        table["whole stream"]["all"] = _percent(report.get(K.MEAN_DAY_DICE.value))
        lines += [
            "",
            "## Day Dice per group",
            "",
            "Predictions made during the days, per group of the stream ('-': no case of that group that day).",
            "",
            markdown_table(table, [*stream_groups, "all"], "day", formatter=format_cell),
        ]
    lines += ["", f"![{title}]({PLOT_NAME})", ""]
    paths = {"markdown": out / SUMMARY_NAME, "plot": out / PLOT_NAME}
    atomic_write_text("\n".join(lines), paths["markdown"])
    plot_day_night(
        [(r[K.DAY.value] + 1, _percent(r.get(K.DAY_DICE.value))) for r in days],
        [(0, _percent(report.get(K.INITIAL_HELDOUT_DICE.value)))]
        + [(r[K.DAY.value] + 1, _percent(r.get(K.HELDOUT_DICE.value))) for r in days if K.HELDOUT_DICE.value in r],
        {k: {g: _percent(v) for g, v in row.items()} for k, row in heldout_groups.items()},
        paths["plot"],
        title,
    )
    if (out / REPORT_NAME).is_file():
        paths["json"] = out / REPORT_NAME
    return paths
