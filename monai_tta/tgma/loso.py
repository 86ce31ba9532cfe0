"""Leave one site out: every held-out site in turn is the unlabelled target of TGMA with the other sites' models."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from monai_tta.data.keys import DataKeys
from monai_tta.distributed import is_main_process
from monai_tta.tgma.report import write_loso_summary, write_tgma_report
from monai_tta.tgma.runner import TGMARunner

__all__ = ["leave_one_site_out"]


def leave_one_site_out(
    target_items: Mapping[str, Sequence[Mapping[str, Any]]],
    sources: Mapping[str, nn.Module],
    runner: Callable[..., TGMARunner],
    output_dir: str | os.PathLike,
    activation: str = "sigmoid",
) -> dict[str, Any]:
    """Run TGMA once per held-out site, with the models of all the other sites as sources, and report.

    Each site's run is resumable and lives in ``<output_dir>/<site>/``; when the target inputs carry labels, the site's
    report is written there (:func:`~monai_tta.tgma.report.write_tgma_report`) and the summary over the sites in
    ``<output_dir>/loso.md`` (:func:`~monai_tta.tgma.report.write_loso_summary`).
    Under ``torchrun`` every rank takes part in each site's adaptation (data-parallel,
    :class:`~monai_tta.tgma.TGMARunner`) and rank 0 alone writes the reports; every rank returns the results, and
    only rank 0's carry ``"reports"``.

    Args:
        target_items: ``{held-out site: its target inputs}``.
        sources: ``{site: source model}``; the held-out site's own model, if present, is left out of its run.
        runner: builds a :class:`~monai_tta.tgma.TGMARunner` from ``sources=`` and ``output_dir=`` (e.g. a
            ``functools.partial`` holding the other options, or a bundle's ``"_mode_": "callable"`` definition).
        output_dir: root folder of the runs.
        activation: the models' activation, for the reports.

    Returns:
        ``{site: the run's results}`` and, with labels, ``"reports"``: ``{site: report.json path}``.

    Raises:
        ValueError: if a held-out site has fewer than 2 other sources.
    """
    out = Path(output_dir)
    results: dict[str, Any] = {}
    reports: dict[str, Path] = {}
    for site, items in target_items.items():
        others = {name: model for name, model in sources.items() if name != site}
        if len(others) < 2:
            raise ValueError(
                f"held-out site {site!r} has {len(others)} other source model(s) ({list(others)}); TGMA needs 2."
            )
        results[site] = runner(sources=others, output_dir=out / site).run(items)
        if is_main_process() and items and all(item.get(DataKeys.LABEL) is not None for item in items):
            title = f"TGMA, held-out site {site}"
            reports[site] = write_tgma_report(results[site], items, out / site, activation, title)["json"]
    if reports:
        write_loso_summary(reports, out)
        results["reports"] = reports
    return results
