"""Outputs of the benchmark: ``results.md``, ``results.json``, ``cases.csv``, ``timing.csv`` and the plots, written
through the shared tables and plots of :mod:`monai_tta.reports`."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_tta.bench.methods import METHODS, REFERENCE, SETTINGS, STREAM
from monai_tta.data.keys import DataKeys
from monai_tta.io import atomic_write_text
from monai_tta.reports import (
    format_interval,
    format_number,
    markdown_table,
    plot_cost_ratios,
    plot_domain_dice,
    plot_stream_dice,
    ratio,
    write_case_csv,
)

__all__ = [
    "write_outputs",
    "json_default",
    "cost_table",
    "dice_table",
    "targets_table",
    "per_channel_dice",
    "reliability_table",
]

#: the target of issue 11: no domain more than this many Dice points below source-only.
MAX_LOSS_VS_SOURCE = 1.0


def write_outputs(
    out: Path,
    rows: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    timing: Mapping[str, Mapping[str, Any]],
    calls: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
    domains: Sequence[str],
    plots: bool = True,
    volumes: bool = False,
) -> list[Path]:
    """Write ``results.md``, ``results.json``, ``cases.csv``, ``timing.csv`` and the plots into ``out``.

    Args:
        out: the output folder (created if needed).
        rows: one record per case, method and setting (:func:`~monai_tta.bench.runner.run_cases`).
        summary: :func:`~monai_tta.bench.stats.summarize_runs` of ``rows``.
        timing: per method, the timing phase's and the memory probes' figures.
        calls: every timed call of the timing phase.
        targets: :func:`~monai_tta.bench.stats.check_targets`.
        meta: the command, machine, configuration and run times.
        domains: the target domains, in order.
        plots: also write the plots.
        volumes: the results are the 3D benchmark's (the Markdown describes volumes and the sliding window).

    Returns:
        the paths written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if rows:
        write_case_csv(out / "cases.csv", rows)
        written.append(out / "cases.csv")
    if calls:
        write_case_csv(out / "timing.csv", calls)
        written.append(out / "timing.csv")
    images = _plots(out, rows, summary, timing, domains) if plots else []
    written += images
    payload = {"meta": meta, "timing": timing, "targets": targets, "summary": summary}
    atomic_write_text(json.dumps(payload, indent=1, default=json_default), out / "results.json")
    if volumes:
        markdown = _volume_markdown(summary, timing, targets, meta, domains, images, rows)
    else:
        markdown = _markdown(summary, timing, targets, meta, domains, images, rows)
    atomic_write_text(markdown, out / "results.md")
    return written + [out / "results.json", out / "results.md"]


def json_default(value: Any) -> Any:
    """``json.dumps`` fallback: paths and numpy scalars as plain values, anything else as text."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def cost_table(timing: Mapping[str, Mapping[str, Any]], run_ms: Mapping[str, float] | None = None) -> str:
    """Markdown table of the cost per case of each method, with each figure's ratio to source-only.

    Args:
        timing: per method, ``median_ms``, ``peak_extra_mb`` and ``peak_total_mb`` (and ``median_cpu_ms``: a CPU
            time column when every method has it).
        run_ms: per method, the median time per case of the Dice runs (a ``-`` column when not given).
    """
    ref, run_ms = timing.get(REFERENCE, {}), run_ms or {}
    columns = ["ms", "ms_x", "run_ms", "run_x", "extra", "extra_x", "total", "total_x"]
    headers = ["ms/case", "x source-only", "ms/case (runs)", "x", "peak extra MiB", "x", "peak total MiB", "x"]
    cpu = bool(timing) and all("median_cpu_ms" in t for t in timing.values())
    if cpu:
        columns[2:2], headers[2:2] = ["cpu", "cpu_x"], ["CPU ms/case", "x"]
    table = {}
    for method, t in timing.items():
        r_ms = run_ms.get(method, math.nan)
        table[method] = {
            "cpu": format_number(t.get("median_cpu_ms", math.nan), 1),
            "cpu_x": format_number(ratio(t.get("median_cpu_ms", math.nan), ref.get("median_cpu_ms")), 2),
            "ms": format_number(t["median_ms"], 1),
            "ms_x": format_number(ratio(t["median_ms"], ref.get("median_ms")), 2),
            "run_ms": format_number(r_ms, 1),
            "run_x": format_number(ratio(r_ms, run_ms.get(REFERENCE)), 2),
            "extra": format_number(t["peak_extra_mb"], 1),
            "extra_x": format_number(ratio(t["peak_extra_mb"], ref.get("peak_extra_mb")), 2),
            "total": format_number(t["peak_total_mb"], 1),
            "total_x": format_number(ratio(t["peak_total_mb"], ref.get("peak_total_mb")), 2),
        }
    return markdown_table(table, columns, row_title="method", formatter=str, headers=headers)


def dice_table(methods: Mapping[str, Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Markdown table of Dice ``mean [lo, hi]`` per method (rows) and domain (columns) from summary blocks."""
    table = {
        method: {
            c: format_interval(e["dice"], e.get("dice_lo"), e.get("dice_hi"))
            for c in columns
            if "dice" in (e := block.get(c, {}))
        }
        for method, block in methods.items()
    }
    return markdown_table(table, columns, row_title="method", formatter=str)


def targets_table(targets: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of the targets: what was measured and whether it met the target (``n/a``: not measured)."""
    table = {
        t["target"]: {
            "measured": format_number(t["measured"], 2),
            "met": "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**"),
        }
        for t in targets
    }
    return markdown_table(table, ["measured", "met"], row_title="target", formatter=str)


def _markdown(
    summary: Mapping[str, Any],
    timing: Mapping[str, Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
    domains: Sequence[str],
    images: Sequence[Path],
    rows: Sequence[Mapping[str, Any]] = (),
) -> str:
    env, cfg = meta["environment"], meta["config"]
    lines = [
        "# TTA benchmark results",
        "",
        f"Command: `{meta['command']}`",
        "",
        _machine(meta),
        "",
        f"Data: {cfg['data']} ({cfg['num_per_domain']} cases per target domain, domains {', '.join(domains)}), "
        f"images {cfg['image_size']}x{cfg['image_size']}; network `{cfg['network']}`, source weights "
        f"`{meta.get('checkpoint')}`; AMP {cfg['amp']}, channels-last {cfg['channels_last']}, "
        f"compile {cfg['compile']}"
        + (
            f"; CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, TF32 allowed in convolutions "
            f"{env.get('cudnn_allow_tf32')} / matrix products {env.get('matmul_allow_tf32')}, cuDNN benchmark "
            f"{env.get('cudnn_benchmark')}"
            if "gpu" in env
            else ""
        )
        + ".",
        "",
        "## Cost per case",
        "",
        f"Timing phase: every method called in turn on the same {meta.get('timing_size')}x{meta.get('timing_size')} "
        f"image, {cfg['timing_reps']} rounds (order rotated), median wall time (and process CPU time); *runs*: "
        f"median over all cases of the setting runs ({cfg['image_size']}x{cfg['image_size']}). Peak memory of one "
        "call on the timing image "
        f"({meta.get('memory_kind')}, median of 3): *extra* = peak minus the memory in use just before the call, "
        "*total* = the peak (see `python -m monai_tta.bench --help` and the module docstring for how). Ratios are to "
        "source-only measured in the same run.",
        "",
        cost_table(timing, meta.get("run_time_ms", {})),
    ]
    lines += ["", "Methods:", ""]
    lines += [f"- `{m}`: {METHODS[m].description}" for m in timing if m in METHODS]
    lines += ["", "## Targets", "", targets_table(targets)]
    lines += _dice_sections(summary, meta, domains, "pixels")
    for setting in SETTINGS:
        if REFERENCE in summary.get(setting, {}) and len(summary[setting]) > 1:
            lines += ["", f"## Against source-only, {setting}", "", _RELIABILITY_TEXT, ""]
            lines.append(reliability_table(summary[setting], [r for r in rows if r["setting"] == setting], domains))
    if images:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images]
    return "\n".join(lines) + "\n"


_RELIABILITY_TEXT = (
    "Dice minus source-only's, per domain (points; over all the cases of the setting, for the stream all its "
    f"rounds); *worst*: the lowest of them, and in the stream also over its last round alone; *met*: worst >= "
    f"-{MAX_LOSS_VS_SOURCE:g} (issue 11: no domain more than {MAX_LOSS_VS_SOURCE:g} point below source-only). "
    "Safeguard: how many times it fired (any signal; in brackets the source gap), and the share of cases predicted "
    "in its fallback (the source state). Safe: the share of cases whose reported prediction is the source model's "
    "(or, for a method without weights, made with the source statistics), and the mean source weight of the "
    "statistics of the reported prediction (1: source, 0: the image's)."
)


def reliability_table(
    methods: Mapping[str, Mapping[str, Any]], rows: Sequence[Mapping[str, Any]], domains: Sequence[str]
) -> str:
    """Per method of one setting: Dice minus source-only's per domain, the worst domain against the target, and
    what the safeguard and ``safe`` did (from the per-case rows' adapter statistics)."""
    ref = methods[REFERENCE]
    columns = [*domains, "worst", "met", "fired", "fallback %", "safe: source %", "safe: source weight"]
    table: dict[str, dict[str, Any]] = {}
    for method, block in methods.items():
        if method == REFERENCE:
            continue
        entry: dict[str, Any] = {}
        diffs = [block[d]["dice"] - ref[d]["dice"] for d in domains if "dice" in block.get(d, {}) and d in ref]
        entry.update({d: format_number(block[d]["dice"] - ref[d]["dice"], 1) for d in domains if d in block})
        worst = min(diffs) if diffs else math.nan
        last = str(max((int(k) for k in block.get("rounds", {})), default=0))
        if last != "0" and last != "1":
            final = block["rounds"][last]
            ref_final = ref["rounds"][last]
            worst_last = min(final[d]["dice"] - ref_final[d]["dice"] for d in domains if d in final)
            entry["worst"] = f"{format_number(worst, 1)} (round {last}: {format_number(worst_last, 1)})"
            worst = min(worst, worst_last)
        else:
            entry["worst"] = format_number(worst, 1)
        entry["met"] = "-" if not math.isfinite(worst) else ("met" if worst >= -MAX_LOSS_VS_SOURCE else "MISSED")
        mine = [r for r in rows if r["method"] == method]
        fired = [r for r in mine if _flag(r.get("safeguard"))]
        if any("safeguard" in r for r in mine):
            gap = sum(r.get("safeguard_signal") == "source_gap" for r in fired)
            entry["fired"] = f"{len(fired)} ({gap})"
        if any("safeguard_fallback" in r for r in mine):
            entry["fallback %"] = format_number(100.0 * np.mean([_flag(r.get("safeguard_fallback")) for r in mine]), 0)
        if any("safe_source" in r for r in mine):
            entry["safe: source %"] = format_number(100.0 * np.mean([_flag(r.get("safe_source")) for r in mine]), 0)
            entry["safe: source weight"] = format_number(np.mean([float(r.get("safe_prior", 0.0)) for r in mine]), 2)
        table[method] = entry
    return markdown_table(table, columns, row_title="method", formatter=str)


def _flag(value: Any) -> bool:
    """A flag of a per-case row (a bool, or 0 / 1 as written to and read from CSV)."""
    try:
        return bool(float(value))
    except (TypeError, ValueError):
        return False


def per_channel_dice(
    rows: Sequence[Mapping[str, Any]], setting: str, channels: Sequence[str], domains: Sequence[str]
) -> dict[str, dict[str, float]]:
    """``{"<method> <channel>": {domain: mean Dice, "overall": mean over domains}}`` of one setting's rows."""
    table: dict[str, dict[str, float]] = {}
    methods = dict.fromkeys(r["method"] for r in rows if r["setting"] == setting)
    for method in methods:
        for channel in channels:
            values = {}
            for domain in domains:
                sel = [
                    float(r[f"dice_{channel}"])
                    for r in rows
                    if r["setting"] == setting and r["method"] == method and r[DataKeys.DOMAIN] == domain
                ]
                if sel:
                    values[domain] = float(np.mean(sel))
            if values:
                values["overall"] = float(np.mean(list(values.values())))
            table[f"{method} {channel}"] = values
    return table


def _machine(meta: Mapping[str, Any]) -> str:
    env = meta["environment"]
    return (
        f"Machine: {env['cpu']} ({env['cpu_count']} CPUs, {env['torch_threads']} torch threads)"
        + (f", GPU {env['gpu']}" if "gpu" in env else "")
        + f"; device `{env['device']}`; torch {env['torch']}, MONAI {env['monai']}, Python {env['python']}. "
        f"Load average at start / end: {meta.get('loadavg_start')} / {meta.get('loadavg_end')}. "
        f"Total run time {meta.get('total_s', math.nan):.0f} s (source training {meta.get('train_s', 0.0):.0f} s)."
    )


def _dice_sections(summary: Mapping[str, Any], meta: Mapping[str, Any], domains: Sequence[str], unit: str) -> list[str]:
    """Per setting: Dice per domain (mean and 95% interval), the surface distance when measured, the stream's rounds."""
    lines: list[str] = []
    for setting in SETTINGS:
        if setting not in summary:
            continue
        methods = summary[setting]
        title = f"{setting} ({meta['config']['rounds']} rounds, continual)" if setting == STREAM else setting
        lines += ["", f"## Dice (%), {title}: mean [95% bootstrap interval]", ""]
        lines.append(dice_table(methods, [*domains, "overall"]))
        asd = {m: {c: b[c].get("asd", math.nan) for c in [*domains, "overall"] if c in b} for m, b in methods.items()}
        if any(math.isfinite(v) for row in asd.values() for v in row.values()):
            lines += ["", f"Average surface distance ({unit}), {setting}:", ""]
            lines.append(markdown_table(asd, [*domains, "overall"], row_title="method"))
        if setting == STREAM:
            rounds = sorted({r for b in methods.values() for r in b.get("rounds", {})}, key=int)
            lines += ["", "Dice (%) per round of the stream:", ""]
            per_round = {m: {f"round {r}": b["rounds"][r]["overall"] for r in rounds} for m, b in methods.items()}
            lines.append(dice_table(per_round, [f"round {r}" for r in rounds]))
            fired = {
                m: {f"round {r}": b["rounds"][r]["overall"].get("safeguard_fired", 0) for r in rounds}
                for m, b in methods.items()
                if "safeguard_fired" in b.get("overall", {})
            }
            if fired:
                lines += ["", "Collapse safeguard: cases where it fired (returned to the source state), per round:", ""]
                lines.append(markdown_table(fired, [f"round {r}" for r in rounds], row_title="method", digits=0))
    return lines


def _volume_markdown(
    summary: Mapping[str, Any],
    timing: Mapping[str, Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
    domains: Sequence[str],
    images: Sequence[Path],
    rows: Sequence[Mapping[str, Any]],
) -> str:
    cfg, window = meta["config"], meta.get("window", {})
    shape = "x".join(str(v) for v in meta.get("volume_shape", []))
    window_text = ", ".join(f"{k}={v}" for k, v in window.items())
    lines = [
        "# TTA benchmark results: 3D volumes",
        "",
        f"Command: `{meta['command']}`",
        "",
        _machine(meta),
        "",
        f"Data: the embedded multi-site MR volumes (`monai_tta.data.generate_mr_sites`, seed {cfg['seed']}), "
        f"{cfg['vol_cases']} test volumes per target site (sites {', '.join(domains)}), read and preprocessed by "
        f"the bundle `{Path(cfg['vol_bundle']).name}`'s `inference.json`; network `{meta.get('network')}` "
        f"({meta.get('network_parameters')} parameters), source weights `{meta.get('checkpoint')}` (trained on "
        f"{cfg['vol_num_source']} generated source cases, their training split). Every method runs through "
        f"`monai_tta.inferers.SlidingWindowAdapter` with the bundle's window (the adapter's defaults for the rest): "
        f"{window_text}. Each method's run is its bundle's evaluation (`inference.json` + `evaluate.json`): the "
        "prediction is brought back to each input volume's own grid (Invertd) and scored there against the label as "
        f"stored. AMP {cfg['amp']}, "
        f"compile {cfg['compile']}.",
        "",
        "## Cost per volume",
        "",
        f"Timing phase: every method called in turn on the same volume ({shape} voxels after preprocessing), "
        f"{cfg['vol_timing_reps']} rounds (order rotated, after one warm-up call), median wall time and median "
        "process CPU time (all threads: the work of a call whatever the load of the machine); *runs*: median "
        "over all volumes of the Dice runs. Peak memory of one call on that volume "
        f"({meta.get('memory_kind')}, median of 3): *extra* = peak minus the memory in use just before the call, "
        "*total* = the peak. Ratios are to source-only sliding-window inference (`source_only`: the source model "
        "through the same sliding window, no adaptation) measured in the same run.",
        "",
        cost_table(timing, meta.get("run_time_ms", {})),
        "",
        f"What one call computes on a volume (K = {window.get('num_patches')} patches of the roi per update, "
        f"{window.get('patch_sampling')} sampling; the statistics pass and the prediction run their windows "
        f"{window.get('sw_batch_size')} at a time):",
        "",
    ]
    lines += [f"- `{m}`: {METHODS[m].description}" for m in timing if m in METHODS]
    lines += ["", "## Targets", "", targets_table(targets)]
    lines += _dice_sections(summary, meta, domains, "voxels")
    channels = [k[len("dice_") :] for k in (rows[0] if rows else {}) if k.startswith("dice_") and k != "dice_mean"]
    for setting in dict.fromkeys(r["setting"] for r in rows):
        lines += ["", f"Dice (%) per structure, {setting} (mean over the volumes of a site; overall: over sites):", ""]
        lines.append(
            markdown_table(per_channel_dice(rows, setting, channels, domains), [*domains, "overall"], digits=1)
        )
    if images:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images]
    return "\n".join(lines) + "\n"


def _plots(
    out: Path,
    rows: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    timing: Mapping[str, Mapping[str, Any]],
    domains: Sequence[str],
) -> list[Path]:
    """``dice_<setting>.png`` per setting, ``stream_dice.png`` and ``time_per_case.png``."""
    paths: list[Path] = []
    for setting, methods in summary.items():
        table = {
            m: {d: b[d]["dice"] for d in [*domains, "overall"] if "dice" in b.get(d, {})} for m, b in methods.items()
        }
        if any(table.values()):
            paths.append(
                plot_domain_dice(
                    table, [*domains, "overall"], out / f"dice_{setting}.png", title=f"Dice per domain, {setting}"
                )
            )
    stream_rows = [r for r in rows if r["setting"] == STREAM and "dice_mean" in r]
    if stream_rows:
        paths.append(plot_stream_dice(stream_rows, out / "stream_dice.png", group_key=DataKeys.DOMAIN.value))
    if timing:
        paths.append(plot_cost_ratios(timing, REFERENCE, out / "time_per_case.png"))
    return paths
