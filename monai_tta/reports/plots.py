"""Plots of the reports: the one home of matplotlib in the package (always the non-interactive Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_tta.keys import DataKeys, StatKeys

__all__ = ["plot_domain_dice", "plot_stream", "plot_overlay", "STREAM_COLUMNS"]

#: columns of the per-case rows that :func:`plot_stream` draws when present, in panel order.
STREAM_COLUMNS: tuple[str, ...] = (
    "dice_mean",
    StatKeys.LOSS.value,
    StatKeys.COSINE.value,
    StatKeys.LR.value,
    StatKeys.WARMUP_LAMBDA.value,
    StatKeys.MASK_FRACTION.value,
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_domain_dice(
    table: Mapping[str, Mapping[str, float]], domains: Sequence[str], path: str | Path, title: str = "Mean Dice"
) -> Path:
    """Grouped bar chart of mean Dice per domain (x) per method (bars); written as PNG."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_stream(
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _as_array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)
