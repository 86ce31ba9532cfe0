"""Statistics of the benchmark: per-domain summaries with bootstrap intervals, and the targets of the speed work."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from monai_tta.adapters.stats import StatKeys
from monai_tta.bench.methods import REFERENCE, SETTINGS, STREAM
from monai_tta.data.keys import DataKeys
from monai_tta.reports import bootstrap_ci, ratio

__all__ = [
    "stratified_ci",
    "summarize_runs",
    "check_targets",
    "VOLUME_TIME_TARGETS",
    "VOLUME_MEMORY_TARGET",
    "check_volume_targets",
]


def stratified_ci(values: Mapping[str, Sequence[float]], n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean over groups of the group means (cases resampled per group)."""
    groups = [np.asarray(v, dtype=float) for v in values.values() if len(v)]
    if not groups:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.zeros(n_boot)
    for g in groups:
        means += g[rng.integers(0, g.size, size=(n_boot, g.size))].mean(axis=1)
    means /= len(groups)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def summarize_runs(rows: Sequence[Mapping[str, Any]], domains: Sequence[str]) -> dict[str, Any]:
    """Per setting, method and domain (and ``overall`` = mean over domains): Dice mean and 95% CI, ASD mean, time,
    and for a method with a collapse safeguard the number of cases where it fired (``safeguard_fired``).

    The intervals resample images: in the stream setting an image's Dice is first averaged over the rounds. For the
    stream setting the same is given per round under ``"rounds"``.
    """
    out: dict[str, Any] = {}
    keys = sorted(dict.fromkeys((r["setting"], r["method"]) for r in rows), key=lambda k: SETTINGS.index(k[0]))
    for setting, method in keys:
        items = [r for r in rows if r["setting"] == setting and r["method"] == method]
        entry = _summary_block(items, domains)
        if setting == STREAM:
            rounds = sorted({int(r["round"]) for r in items})
            entry["rounds"] = {
                str(k): _summary_block([r for r in items if int(r["round"]) == k], domains) for k in rounds
            }
        out.setdefault(setting, {})[method] = entry
    return out


def _per_case_means(items: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    """``key`` averaged per case id (the rounds of a stream repeat the same images: they are not new samples)."""
    values: dict[str, list[float]] = {}
    for r in items:
        values.setdefault(str(r[DataKeys.CASE_ID]), []).append(float(r[key]))
    return [float(np.mean(v)) for v in values.values()]


def _summary_block(items: Sequence[Mapping[str, Any]], domains: Sequence[str]) -> dict[str, Any]:
    block: dict[str, Any] = {}
    per_domain: dict[str, list[float]] = {}
    for domain in domains:
        sel = [r for r in items if r[DataKeys.DOMAIN] == domain]
        if not sel:
            continue
        entry: dict[str, Any] = {"n": len(sel), "time_ms": float(np.median([r["time_ms"] for r in sel]))}
        if "dice_mean" in sel[0]:
            dice = _per_case_means(sel, "dice_mean")  # resample images, not repeated passes over them
            per_domain[domain] = dice
            lo, hi = bootstrap_ci(dice)
            entry.update(dice=float(np.mean([float(r["dice_mean"]) for r in sel])), dice_lo=lo, dice_hi=hi)
        if "asd_mean" in sel[0]:
            entry["asd"] = float(np.mean([float(r["asd_mean"]) for r in sel]))
        if StatKeys.SAFEGUARD in sel[0]:
            entry["safeguard_fired"] = int(sum(float(r[StatKeys.SAFEGUARD]) for r in sel))
        block[domain] = entry
    overall: dict[str, Any] = {"n": len(items), "time_ms": float(np.median([r["time_ms"] for r in items]))}
    if per_domain:
        lo, hi = stratified_ci(per_domain)
        overall.update(dice=float(np.mean([block[d]["dice"] for d in per_domain])), dice_lo=lo, dice_hi=hi)
    if items and "asd_mean" in items[0]:
        overall["asd"] = float(np.mean([block[d]["asd"] for d in block]))
    if any("safeguard_fired" in e for e in block.values()):
        overall["safeguard_fired"] = int(sum(e.get("safeguard_fired", 0) for e in block.values()))
    block["overall"] = overall
    return block


def check_targets(
    timing: Mapping[str, Mapping[str, Any]], summary: Mapping[str, Any], device: torch.device
) -> list[dict[str, Any]]:
    """The targets of the speed work, with what this run measured (``met`` is None when not measured)."""
    ref = timing.get(REFERENCE, {})
    targets: list[dict[str, Any]] = []

    def add(name: str, value: float, limit: float, higher_is_better: bool = False) -> None:
        met = None if not math.isfinite(value) else (value >= limit if higher_is_better else value <= limit)
        targets.append({"target": name, "measured": value, "limit": limit, "met": met})

    if device.type == "cpu":
        for method, label, limit in (("grata", "exact", 9.5), ("grata_approx", "approximate", 4.0)):
            for name, how in ((method, ""), (f"{method}_nosafeguard", " without the safeguard")):
                if name in timing:
                    value = ratio(timing[name]["median_ms"], ref.get("median_ms"))
                    add(f"{label} GraTa{how} time / source-only (CPU) <= {limit:g}", value, limit)
    elif "grata" in timing and "grata_separate" in timing:
        add(
            "separate-forward GraTa time / exact GraTa (GPU) >= 2",
            ratio(timing["grata_separate"]["median_ms"], timing["grata"]["median_ms"]),
            2.0,
            higher_is_better=True,
        )
    for setting, methods in summary.items():
        if "grata" in methods and "grata_approx" in methods:
            exact, approx = methods["grata"]["overall"].get("dice"), methods["grata_approx"]["overall"].get("dice")
            if exact is not None and approx is not None:
                add(f"Dice(exact GraTa) - Dice(approximate), {setting} <= 0.5", exact - approx, 0.5)
    for method in ("grata", "grata_approx"):
        if method in timing:
            for kind in ("extra", "total"):
                value = ratio(timing[method][f"peak_{kind}_mb"], ref.get(f"peak_{kind}_mb"))
                add(f"{method} peak memory ({kind}) / source-only <= 3", value, 3.0)
    return targets


#: targets of the 3D benchmark (issue 9): time per volume / source-only sliding-window inference, on a CPU.
VOLUME_TIME_TARGETS = {"grata": 12.0, "tent": 2.5}
#: extra peak memory per volume / source-only sliding-window inference, for every gradient method.
VOLUME_MEMORY_TARGET = 3.0


def check_volume_targets(timing: Mapping[str, Mapping[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    """The targets of the 3D benchmark, with what this run measured.

    Time per volume of exact GraTa <= 12x and of TENT <= 2.5x source-only sliding-window inference (CPU targets:
    on another device the ratio is recorded with ``met`` None), as wall time and, on a CPU, as process CPU time (the
    work of a call, whatever the load of a shared machine); and the extra peak memory of each <= 3x.
    """
    ref = timing.get(REFERENCE, {})
    targets: list[dict[str, Any]] = []
    on_cpu = device.type == "cpu"
    clocks = [("median_ms", "time")] + ([("median_cpu_ms", "CPU time")] if on_cpu else [])
    for key, clock in clocks:
        for method, limit in VOLUME_TIME_TARGETS.items():
            if method not in timing or key not in timing[method]:
                continue
            value = ratio(timing[method][key], ref.get(key))
            met = None if not on_cpu or not math.isfinite(value) else value <= limit
            name = f"{method} {clock} per volume / source-only sliding window (CPU) <= {limit:g}"
            targets.append({"target": name, "measured": value, "limit": limit, "met": met})
    for method in VOLUME_TIME_TARGETS:
        if method not in timing:
            continue
        value = ratio(timing[method]["peak_extra_mb"], ref.get("peak_extra_mb"))
        met = None if not math.isfinite(value) else value <= VOLUME_MEMORY_TARGET
        name = f"{method} peak memory (extra) per volume / source-only <= {VOLUME_MEMORY_TARGET:g}"
        targets.append({"target": name, "measured": value, "limit": VOLUME_MEMORY_TARGET, "met": met})
    return targets
