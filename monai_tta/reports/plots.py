"""Plots of the reports: the one home of matplotlib in the package (always the non-interactive Agg backend).

Every figure is written as PNG at 110 dpi through :func:`monai_tta.io.atomic_write`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_tta.adapters.stats import StatKeys
from monai_tta.data.keys import DataKeys
from monai_tta.io import atomic_write
from monai_tta.reports.tables import format_number, ratio

__all__ = [
    "plot_domain_dice",
    "plot_stream_dice",
    "plot_stream_stats",
    "plot_overlay",
    "plot_cost_ratios",
    "plot_day_night",
    "STREAM_COLUMNS",
]

#: columns of the per-case rows that :func:`plot_stream_stats` draws when present, in panel order.
STREAM_COLUMNS: tuple[str, ...] = (
    "dice_mean",
    StatKeys.LOSS.value,
    StatKeys.COSINE.value,
    StatKeys.LR.value,
    StatKeys.WARMUP_LAMBDA.value,
    StatKeys.MASK_FRACTION.value,
)

_DPI = 110


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as PNG to ``path`` (atomically) and close it."""
    plt = _pyplot()
    try:
        fig.tight_layout()
        return atomic_write(Path(path), lambda f: fig.savefig(f, dpi=_DPI, format="png"))
    finally:
        plt.close(fig)


def _nan(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def plot_domain_dice(
    table: Mapping[str, Mapping[str, float]], domains: Sequence[str], path: str | Path, title: str = "Mean Dice"
) -> Path:
    """Grouped bar chart of mean Dice per domain (x) per method (bars); written as PNG.

    Args:
        table: ``{method: {domain: Dice in %}}``.
        domains: the groups on the x axis, in order (a missing value draws no bar).
        path: the PNG file.
        title: the plot's title.
    """
    plt = _pyplot()
    methods = list(table)
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(domains), 3.6))
    for i, method in enumerate(methods):
        xs = np.arange(len(domains)) + (i - (len(methods) - 1) / 2) * width
        ax.bar(xs, [table[method].get(d, np.nan) for d in domains], width, label=method)
    ax.set_xticks(np.arange(len(domains)), domains)
    ax.set_ylabel("Dice (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_stream_dice(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    value_key: str = "dice_mean",
    group_key: str = "domain",
    round_key: str = "round",
    order_key: str = "position",
) -> Path:
    """Dice along a continual stream, one line per method (moving mean), with the domain changes marked.

    Args:
        rows: one record per case and method, with ``method``, ``value_key``, ``group_key``, ``round_key`` and
            ``order_key`` (the case's position along the stream).
        path: the PNG file.
        value_key: the plotted value (in %).
        group_key: the domain of a case (a thin line at each change, a thick one at each new round).
        round_key: the round of the stream.
        order_key: the position of a case along the stream.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.8))
    window = max(len(rows) // max(len({r["method"] for r in rows}), 1) // 30, 1)
    for method in dict.fromkeys(r["method"] for r in rows):
        sel = sorted((r for r in rows if r["method"] == method), key=lambda r: r[order_key])
        values = np.array([r[value_key] for r in sel])
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(smooth.size) + window - 1, smooth, label=method, lw=1.3)
    first = sorted((r for r in rows if r["method"] == rows[0]["method"]), key=lambda r: r[order_key])
    for i, r in enumerate(first):
        if i and r[group_key] != first[i - 1][group_key]:
            ax.axvline(i - 0.5, color="grey", lw=1.2 if r[round_key] != first[i - 1][round_key] else 0.4, alpha=0.6)
        if i == 0 or r[group_key] != first[i - 1][group_key]:
            ax.text(i, 1.0, r[group_key], transform=ax.get_xaxis_transform(), fontsize=6, va="bottom")
    ax.set_xlabel(f"case along the stream (Dice: moving mean over {window} cases)")
    ax.set_ylabel("Dice (%)")
    ax.legend(fontsize=7, loc="lower right", ncol=3)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_cost_ratios(
    costs: Mapping[str, Mapping[str, float]],
    reference: str,
    path: str | Path,
    panels: Sequence[tuple[str, str, str]] = (
        ("median_ms", "time per case", "ms"),
        ("peak_extra_mb", "peak extra memory per case", "MiB"),
    ),
) -> Path:
    """Horizontal bars of each method's cost as a ratio to ``reference``'s, one panel per measure.

    Args:
        costs: ``{method: {measure: value}}``.
        reference: the method every ratio divides by (a missing or non-positive reference gives no bar).
        path: the PNG file.
        panels: ``(measure key, title, unit)`` per panel.
    """
    plt = _pyplot()
    ref = costs.get(reference, {})
    names = list(costs)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 0.5 * len(names) + 1.6), squeeze=False)
    for ax, (key, title, unit) in zip(axes[0], panels):
        ratios = [ratio(costs[m].get(key, math.nan), ref.get(key)) for m in names]
        ax.barh(names, [0.0 if not math.isfinite(v) else v for v in ratios], color="tab:blue")
        for i, (m, v) in enumerate(zip(names, ratios)):
            label = f" {format_number(v, 2)}x ({format_number(costs[m].get(key), 1)} {unit})"
            ax.text(v if math.isfinite(v) else 0.0, i, label, va="center", fontsize=7)
        ax.set_xlabel(f"{title} / {reference.replace('_', '-')}")
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlim(0, max([v for v in ratios if math.isfinite(v)] + [1.0]) * 1.45)
    return _save(fig, path)


def plot_day_night(
    day_dice: Sequence[tuple[int, float | None]],
    heldout: Sequence[tuple[int, float | None]],
    heldout_groups: Mapping[str, Mapping[str, float | None]],
    path: str | Path,
    title: str = "DyNA",
) -> Path:
    """A day/night run: Dice of each day's predictions and held-out Dice after each night; with groups, a second
    panel of held-out Dice per group after each night (``mean`` dashed).

    Args:
        day_dice: ``(day k, Dice %)`` of the predictions of each day (``k`` from 1; Dice ``None`` when not scored).
        heldout: ``(night k, Dice %)`` of the held-out cases after night ``k`` (0: the initial model).
        heldout_groups: ``{row name: {group: Dice %}}`` per model, in order (empty: one panel).
        path: the PNG file.
        title: prefix of the panels' titles.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2 if heldout_groups else 1, figsize=(10 if heldout_groups else 5.5, 3.8), squeeze=False)
    ax = axes[0, 0]
    for series, style, label in (
        (day_dice, "o-", "day predictions (day k)"),
        (heldout, "s--", "held-out, after night k (0: initial)"),
    ):
        if any(v is not None for _, v in series):
            ax.plot([k for k, _ in series], _nan([v for _, v in series]), style, label=label)
    ax.set_xticks(range(len(day_dice) + 1))
    ax.set_xlabel("day / night k")
    ax.set_ylabel("Dice (%)")
    ax.set_title(f"{title}: mean Dice")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if heldout_groups:
        ax = axes[0, 1]
        rows = list(heldout_groups.values())
        for group in rows[0]:
            style = "k--" if group == "mean" else "o-"
            ax.plot(range(len(rows)), _nan([row.get(group) for row in rows]), style, label=group)
        ax.set_xticks(range(len(rows)), [str(i) for i in range(len(rows))])
        ax.set_xlabel("nights (0: initial model)")
        ax.set_ylabel("Dice (%)")
        ax.set_title(f"{title}: held-out Dice per group")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(fig, path)


def plot_stream_stats(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    columns: Sequence[str] = STREAM_COLUMNS,
    title: str = "Along the stream",
) -> Path | None:
    """Per-case values along the stream, one panel per column, one colour per domain, resets marked.

    Args:
        rows: per-case records in stream order (``domain`` and numeric columns; ``reset`` marks resets).
        path: the PNG to write.
        columns: columns to draw; those absent from the rows are skipped.
        title: figure title.

    Returns:
        the path written, or ``None`` when no column is present.
    """
    present = [c for c in columns if any(isinstance(r.get(c), (int, float)) for r in rows)]
    if not rows or not present:
        return None
    plt = _pyplot()
    domains = [str(r.get(DataKeys.DOMAIN.value, "all")) for r in rows]
    colours = {d: f"C{i % 10}" for i, d in enumerate(dict.fromkeys(domains))}
    x = np.arange(len(rows))
    fig, axes = plt.subplots(len(present), 1, figsize=(8, 1.7 * len(present) + 0.8), sharex=True, squeeze=False)
    for ax, column in zip(axes[:, 0], present):
        values = np.array([float(r.get(column, np.nan)) for r in rows])
        for domain, colour in colours.items():
            mask = np.array([d == domain for d in domains])
            ax.plot(x[mask], values[mask], ".", color=colour, ms=4, label=domain)
        for i in x[1:]:
            if domains[i] != domains[i - 1]:
                ax.axvline(i - 0.5, color="grey", lw=0.6, alpha=0.6)
        for i in x:
            if float(rows[i].get(StatKeys.RESET.value, 0) or 0) > 0:
                ax.axvline(i, color="tab:red", lw=0.6, ls=":", alpha=0.8)
        ax.set_ylabel(column, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="best", ncol=min(len(colours), 5))
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel("case along the stream (dotted red: reset to the source state)")
    return _save(fig, path)


def _display_image(image: np.ndarray) -> np.ndarray:
    """(C, *spatial) -> a 2D/3D grey or RGB array scaled to [0, 1] for display."""
    image = np.asarray(image, dtype=float)
    image = image[:3].transpose(*range(1, image.ndim), 0) if image.shape[0] == 3 else image[0]
    lo, hi = np.nanmin(image), np.nanmax(image)
    return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)


def _mask_outline(ax: Any, mask: np.ndarray, colour: str) -> None:
    for channel in mask:
        if channel.any():
            ax.contour(channel.astype(float), levels=[0.5], colors=[colour], linewidths=0.8)


def plot_overlay(
    image: Any,
    pred: Any,
    path: str | Path,
    label: Any | None = None,
    title: str = "",
) -> Path:
    """Image with the prediction (and the label) drawn over it; a 3D volume gets an axial, a coronal and a sagittal
    view through its centre.

    The prediction is drawn as filled colour per channel and as red outlines, the label as green outlines.

    Args:
        image: ``(C, H, W)`` or ``(C, H, W, D)`` (1 or 3 channels shown; grey for others: the first channel).
        pred: binarised prediction, ``(K, *spatial)``.
        path: the PNG to write.
        label: binarised label, ``(K, *spatial)``, or ``None``.
        title: figure title.

    Raises:
        ValueError: if the image is not 2D or 3D with a channel axis, or the prediction's spatial shape differs.
    """
    image, pred = _as_array(image), _as_array(pred)
    label = None if label is None else _as_array(label)
    if image.ndim not in (3, 4):
        raise ValueError(f"overlay of {path}: image must be (C, H, W) or (C, H, W, D), got shape {image.shape}.")
    if pred.shape[1:] != image.shape[1:] or (label is not None and label.shape[1:] != image.shape[1:]):
        shapes = (image.shape, pred.shape, None if label is None else label.shape)
        raise ValueError(f"overlay of {path}: image, prediction and label must share a spatial shape, got {shapes}.")
    if image.ndim == 3:
        views = [("", image, pred, label)]
    else:
        views = []
        for axis, name in ((3, "axial"), (2, "coronal"), (1, "sagittal")):
            centre = image.shape[axis] // 2
            views.append(
                (
                    name,
                    np.take(image, centre, axis=axis),
                    np.take(pred, centre, axis=axis),
                    None if label is None else np.take(label, centre, axis=axis),
                )
            )
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(views), figsize=(max(3.2 * len(views), 4.8), 3.6), squeeze=False)
    for ax, (name, img, prd, lbl) in zip(axes[0], views):
        shown = _display_image(img)
        ax.imshow(shown, cmap=None if shown.ndim == 3 else "gray")
        tint = np.zeros((*prd.shape[1:], 4))
        for k, channel in enumerate(prd > 0.5):
            tint[channel] = (*plt.get_cmap("tab10")(k)[:3], 0.25)
        ax.imshow(tint)
        _mask_outline(ax, prd > 0.5, "red")
        if lbl is not None:
            _mask_outline(ax, lbl > 0.5, "lime")
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    legend = "red: prediction, green: label" if label is not None else "red: prediction"
    fig.suptitle(f"{title}\n{legend}", fontsize=8)
    return _save(fig, path)


def _as_array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)
