"""Per-case records to per-domain summaries, CSV files and Markdown tables: the one home of table formatting."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_tta.io import atomic_write_text

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
]

MEAN_DICE = "dice_mean"


def bootstrap_ci(
    values: Sequence[float], n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (``nan`` for an empty sequence).

    Args:
        values: per-case values.
        n_boot: bootstrap resamples.
        alpha: 1 - confidence level.
        seed: resampling seed.
    """
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def stratified_ci(values: Mapping[str, Sequence[float]], n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean over groups of the group means (cases resampled per group, e.g.
    the overall Dice as the mean over domains); ``nan`` when every group is empty."""
    groups = [np.asarray(v, dtype=float) for v in values.values() if len(v)]
    if not groups:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.zeros(n_boot)
    for g in groups:
        means += g[rng.integers(0, g.size, size=(n_boot, g.size))].mean(axis=1)
    means /= len(groups)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def summarize(rows: Sequence[Mapping[str, Any]], group_key: str = "domain") -> dict[str, dict[str, float]]:
    """Mean of every numeric column per group, plus ``"overall"`` (mean over groups, GraTa's averaging) and the
    case count ``n``. A column that some rows lack (e.g. an adapter statistic reported only when an update ran) is
    the mean over the rows that have it.

    Args:
        rows: per-case records.
        group_key: column that names the group.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row[group_key]), []).append(row)
    summary: dict[str, dict[str, float]] = {}
    for name, items in groups.items():
        cols = dict.fromkeys(k for r in items for k, v in r.items() if k != group_key and _is_number(v))
        summary[name] = {k: float(np.mean([float(r[k]) for r in items if _is_number(r.get(k))])) for k in cols}
        summary[name]["n"] = len(items)
    if summary:
        cols = set.intersection(*[set(s) for s in summary.values()]) - {"n"}
        summary["overall"] = {k: float(np.mean([s[k] for s in summary.values()])) for k in sorted(cols)}
        summary["overall"]["n"] = len(rows)
    return summary


def _is_number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def write_case_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write per-case records as CSV (columns: the union of keys, in first-seen order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(buffer.getvalue(), path)


def read_case_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read per-case records written by :func:`write_case_csv` (numbers parsed back to floats)."""
    with Path(path).open(newline="") as f:
        return [{k: float(v) if _is_number(v) else v for k, v in row.items()} for row in csv.DictReader(f)]


def format_number(value: Any, digits: int = 2) -> str:
    """A number in fixed-point notation with ``digits`` decimals; ``-`` for ``None``, a non-number or a non-finite
    value."""
    if not _is_number(value) or not math.isfinite(float(value)):
        return "-"
    return f"{float(value):.{digits}f}"


def format_cell(value: Any, digits: int = 2) -> str:
    """A table cell of mixed content: ``-`` for ``None`` or NaN, a float with ``digits`` decimals (in scientific
    notation when its magnitude is below 0.01), anything else (text, integers) as ``str`` gives it."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.{digits}f}" if abs(value) >= 0.01 or value == 0 else f"{value:.{digits}e}"
    return str(value)


def format_interval(mean: Any, lo: Any, hi: Any, digits: int = 1) -> str:
    """``mean [lo, hi]`` with :func:`format_number` for each (e.g. a mean and its 95% interval)."""
    return f"{format_number(mean, digits)} [{format_number(lo, digits)}, {format_number(hi, digits)}]"


def ratio(value: float, reference: float | None) -> float:
    """``value / reference`` (e.g. a cost relative to a reference method's); NaN when the reference is missing, not
    finite or not positive."""
    return value / reference if reference and math.isfinite(reference) and reference > 0 else math.nan


def markdown_table(
    table: Mapping[str, Mapping[str, Any]],
    columns: Sequence[str],
    row_title: str = "method",
    digits: int = 2,
    formatter: Callable[[Any], str] | None = None,
    headers: Sequence[str] | None = None,
) -> str:
    """A Markdown table: one row per key of ``table``, one column per name in ``columns`` (missing values: ``-``).

    Args:
        table: ``{row name: {column name: value}}``.
        columns: the columns shown, in order.
        row_title: heading of the first column (the row names).
        digits: decimals of the default formatter (:func:`format_number`: numbers only, anything else ``-``).
        formatter: formats a present value as a cell (e.g. :func:`format_cell` for text and numbers, ``str`` for
            cells formatted beforehand); default :func:`format_number` with ``digits``.
        headers: the headings shown for ``columns`` (default: the column names); may repeat a heading.

    Raises:
        ValueError: if ``headers`` does not give one heading per column.
    """
    if headers is not None and len(headers) != len(columns):
        raise ValueError(f"markdown_table: {len(headers)} headers for {len(columns)} columns; give one per column.")
    fmt = formatter if formatter is not None else (lambda v: format_number(v, digits))
    lines = ["| " + " | ".join([row_title, *(headers or columns)]) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, values in table.items():
        cells = [fmt(values[c]) if c in values else "-" for c in columns]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)
