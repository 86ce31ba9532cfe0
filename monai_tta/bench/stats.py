"""Statistics of the benchmark: the case report's per-domain means (:func:`monai_tta.reports.summarize`) per setting
and method, with bootstrap intervals of Dice, and the targets of the speed work."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from monai_tta.adapters.stats import StatKeys
from monai_tta.bench.methods import REFERENCE, SETTINGS, STREAM
from monai_tta.data.keys import DataKeys
from monai_tta.reports import MEAN_DICE, bootstrap_ci, ratio, stratified_ci, summarize

__all__ = ["summarize_runs", "check_targets", "VOLUME_TIME_TARGETS", "VOLUME_MEMORY_TARGET"]

#: targets of the 3D benchmark (issue 9): time per volume / source-only sliding-window inference, on a CPU.
VOLUME_TIME_TARGETS = {"grata": 12.0, "tent": 2.5}
#: extra peak memory per volume / source-only sliding-window inference, for every gradient method.
VOLUME_MEMORY_TARGET = 3.0


def summarize_runs(rows: Sequence[Mapping[str, Any]], domains: Sequence[str]) -> dict[str, Any]:
    """Per setting and method, the per-domain means of every numeric column of the rows and ``overall`` (the mean over
    domains) as the case report computes them, with ``dice_lo`` / ``dice_hi`` (95% bootstrap interval of
    ``dice_mean``) and, for a method with a collapse safeguard, ``safeguard_fired`` (cases where it fired).

    The intervals resample images: in the stream setting an image's Dice is first averaged over the rounds. For the
    stream setting the same is given per round under ``"rounds"``.
    """
    out: dict[str, Any] = {}
    for setting in SETTINGS:
        for method in dict.fromkeys(r["method"] for r in rows if r["setting"] == setting):
            items = [r for r in rows if r["setting"] == setting and r["method"] == method]
            entry = _block(items, domains)
            if setting == STREAM:
                rounds = sorted({int(r["round"]) for r in items})
                entry["rounds"] = {str(k): _block([r for r in items if int(r["round"]) == k], domains) for k in rounds}
            out.setdefault(setting, {})[method] = entry
    return out


def _block(items: Sequence[Mapping[str, Any]], domains: Sequence[str]) -> dict[str, Any]:
    items = [r for r in items if r[DataKeys.DOMAIN] in domains]
    if not items:
        return {}
    means = summarize(items)
    block: dict[str, Any] = {d: means[d] for d in domains if d in means}
    block["overall"] = means["overall"]
    per_domain: dict[str, list[float]] = {}
    for domain in block:
        sel = items if domain == "overall" else [r for r in items if r[DataKeys.DOMAIN] == domain]
        if MEAN_DICE in sel[0] and domain != "overall":
            cases: dict[str, list[float]] = {}  # per image: the rounds of a stream are not new samples
            for r in sel:
                cases.setdefault(str(r[DataKeys.CASE_ID]), []).append(float(r[MEAN_DICE]))
            per_domain[domain] = [float(np.mean(v)) for v in cases.values()]
            block[domain]["dice_lo"], block[domain]["dice_hi"] = bootstrap_ci(per_domain[domain])
        if StatKeys.SAFEGUARD in sel[0]:
            block[domain]["safeguard_fired"] = int(sum(float(r[StatKeys.SAFEGUARD]) for r in sel))
    if per_domain:
        block["overall"]["dice_lo"], block["overall"]["dice_hi"] = stratified_ci(per_domain)
    return block


def check_targets(
    timing: Mapping[str, Mapping[str, Any]], summary: Mapping[str, Any], device: torch.device, dims: int = 2
) -> list[dict[str, Any]]:
    """The targets of the speed work (``dims`` 2) or of the 3D benchmark (``dims`` 3), with what this run measured
    (``met`` is None when not measured, or for a CPU target measured elsewhere).

    2D: exact GraTa <= 9.5x and approximate <= 4x source-only time on a CPU (with and without the safeguard), on a
    GPU separate forwards >= 2x exact GraTa's time; exact minus approximate Dice <= 0.5 per setting; peak memory of
    both <= 3x. 3D: time per volume of exact GraTa <= 12x and of TENT <= 2.5x source-only sliding-window inference
    (wall time and, on a CPU, process CPU time), and their extra peak memory <= 3x.
    """
    ref, on_cpu = timing.get(REFERENCE, {}), device.type == "cpu"
    targets: list[dict[str, Any]] = []

    def add(name: str, value: float, limit: float, higher: bool = False, measured_here: bool = True) -> None:
        met = None if not math.isfinite(value) or not measured_here else (value >= limit if higher else value <= limit)
        targets.append({"target": name, "measured": value, "limit": limit, "met": met})

    def x_ref(method: str, key: str) -> float:
        return ratio(timing[method].get(key, math.nan), ref.get(key))

    if dims == 3:
        for key, clock in [("median_ms", "time")] + ([("median_cpu_ms", "CPU time")] if on_cpu else []):
            for method, limit in ((m, v) for m, v in VOLUME_TIME_TARGETS.items() if m in timing):
                name = f"{method} {clock} per volume / source-only sliding window (CPU) <= {limit:g}"
                add(name, x_ref(method, key), limit, measured_here=on_cpu)
        for method in (m for m in VOLUME_TIME_TARGETS if m in timing):
            limit = VOLUME_MEMORY_TARGET
            add(
                f"{method} peak memory (extra) per volume / source-only <= {limit:g}",
                x_ref(method, "peak_extra_mb"),
                limit,
            )
        return targets
    if on_cpu:
        for method, label, limit in (("grata", "exact", 9.5), ("grata_approx", "approximate", 4.0)):
            for name, how in ((method, ""), (f"{method}_nosafeguard", " without the safeguard")):
                if name in timing:
                    add(f"{label} GraTa{how} time / source-only (CPU) <= {limit:g}", x_ref(name, "median_ms"), limit)
    elif "grata" in timing and "grata_separate" in timing:
        value = ratio(timing["grata_separate"]["median_ms"], timing["grata"]["median_ms"])
        add("separate-forward GraTa time / exact GraTa (GPU) >= 2", value, 2.0, higher=True)
    for setting, methods in summary.items():
        exact, approx = (methods.get(m, {}).get("overall", {}).get(MEAN_DICE) for m in ("grata", "grata_approx"))
        if exact is not None and approx is not None:
            add(f"Dice(exact GraTa) - Dice(approximate), {setting} <= 0.5", exact - approx, 0.5)
    for method in (m for m in ("grata", "grata_approx") if m in timing):
        for kind in ("extra", "total"):
            add(f"{method} peak memory ({kind}) / source-only <= 3", x_ref(method, f"peak_{kind}_mb"), 3.0)
    return targets
