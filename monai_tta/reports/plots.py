"""Plots of the reports: the one home of matplotlib in the package (always the non-interactive Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_domain_dice"]


def plot_domain_dice(
    table: Mapping[str, Mapping[str, float]], domains: Sequence[str], path: str | Path, title: str = "Mean Dice"
) -> Path:
    """Grouped bar chart of mean Dice per domain (x) per method (bars); written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
