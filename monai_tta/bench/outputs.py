"""Outputs of the benchmark: ``results.md``, ``results.json``, ``cases.csv`` and the plots, written
through the shared tables and plots of :mod:`monai_tta.reports`."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_tta.adapters.stats import StatKeys
from monai_tta.bench.data import VOLUME_BUNDLE
from monai_tta.bench.methods import METHODS, REFERENCE, SETTINGS, STREAM
from monai_tta.data.keys import DataKeys
from monai_tta.io import atomic_write_text
from monai_tta.reports import (
    MEAN_DICE,
    format_interval,
    format_number,
    markdown_table,
    plot_cost_ratios,
    plot_domain_dice,
    plot_stream_dice,
    ratio,
    summarize,
    write_case_csv,
)

__all__ = ["write_outputs", "cost_table", "dice_table", "reliability_table", "MAX_LOSS_VS_SOURCE"]

#: the target of issue 11: no domain more than this many Dice points below source-only.
MAX_LOSS_VS_SOURCE = 1.0

_RELIABILITY_TEXT = (
    "Dice minus source-only's, per domain (points; over all the cases of the setting, for the stream all its "
    f"rounds); *worst*: the lowest of them, and in the stream also over its last round alone; *met*: worst >= "
    f"-{MAX_LOSS_VS_SOURCE:g} (issue 11: no domain more than {MAX_LOSS_VS_SOURCE:g} point below source-only). "
    "Safeguard: how many times it fired (any signal; in brackets the source gap), and the share of cases predicted "
    "in its fallback (the source state). Safe: the share of cases whose reported prediction is the source model's "
    "(or, for a method without weights, made with the source statistics), and the mean source weight of the "
    "statistics of the reported prediction (1: source, 0: the image's)."
)


def write_outputs(out: Path, result: Mapping[str, Any], plots: bool = True) -> list[Path]:
    """Write ``results.md``, ``results.json``, ``cases.csv`` and the plots into ``out``.

    Args:
        out: the output folder (created if needed).
        result: ``rows`` (one record per case, method and setting), ``summary``
            (:func:`~monai_tta.bench.stats.summarize_runs`), ``timing`` (per method, the cost per case:
            :func:`~monai_tta.bench.runner.cost_per_method`), ``targets``, ``meta`` (command, machine, configuration,
            run times; ``dims``) and ``domains``.
        plots: also write the plots.

    Returns:
        the paths written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, summary, timing, domains = result["rows"], result["summary"], result["timing"], result["domains"]
    written = []
    if rows:
        write_case_csv(out / "cases.csv", rows)
        written.append(out / "cases.csv")
    images = []
    if plots:
        for setting, methods in summary.items():
            table = {
                m: {d: b[d][MEAN_DICE] for d in [*domains, "overall"] if MEAN_DICE in b.get(d, {})}
                for m, b in methods.items()
            }
            if any(table.values()):
                path, title = out / f"dice_{setting}.png", f"Dice per domain, {setting}"
                images.append(plot_domain_dice(table, [*domains, "overall"], path, title=title))
        if any(r["setting"] == STREAM for r in rows):
            stream = [r for r in rows if r["setting"] == STREAM]
            images.append(plot_stream_dice(stream, out / "stream_dice.png", group_key=DataKeys.DOMAIN.value))
        if timing:
            images.append(plot_cost_ratios(timing, REFERENCE, out / "time_per_case.png"))
    keys = ("meta", "timing", "targets", "summary")
    payload = json.dumps({k: result[k] for k in keys}, indent=1, default=_json_default)
    atomic_write_text(payload, out / "results.json")
    atomic_write_text(_markdown(result, images), out / "results.md")
    return written + images + [out / "results.json", out / "results.md"]


def _json_default(value: Any) -> Any:
    return value.item() if isinstance(value, (np.floating, np.integer)) else str(value)


def cost_table(timing: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table of the cost per case of each method, with each figure's ratio to source-only.

    Args:
        timing: per method, ``median_ms``, ``peak_extra_mb`` and ``peak_total_mb`` (and ``median_cpu_ms``: a CPU
            time column when every method has it).
    """
    ref = timing.get(REFERENCE, {})
    figures = [("median_ms", "ms/case", 1), ("peak_extra_mb", "peak extra MiB", 1)]
    figures += [("peak_total_mb", "peak total MiB", 1)]
    if timing and all("median_cpu_ms" in t for t in timing.values()):
        figures.insert(1, ("median_cpu_ms", "CPU ms/case", 1))
    table: dict[str, dict[str, str]] = {}
    for method, t in timing.items():
        table[method] = {}
        for key, _, digits in figures:
            table[method][key] = format_number(t.get(key, math.nan), digits)
            table[method][f"{key}_x"] = format_number(ratio(t.get(key, math.nan), ref.get(key)), 2)
    columns = [c for key, _, _ in figures for c in (key, f"{key}_x")]
    headers = [h for _, title, _ in figures for h in (title, "x source-only" if title == "ms/case" else "x")]
    return markdown_table(table, columns, row_title="method", formatter=str, headers=headers)


def dice_table(methods: Mapping[str, Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Markdown table of Dice ``mean [lo, hi]`` per method (rows) and domain (columns) from summary blocks."""
    table = {
        m: {
            c: format_interval(b[c][MEAN_DICE], b[c].get("dice_lo"), b[c].get("dice_hi"))
            for c in columns
            if MEAN_DICE in b.get(c, {})
        }
        for m, b in methods.items()
    }
    return markdown_table(table, columns, row_title="method", formatter=str)


def reliability_table(
    methods: Mapping[str, Mapping[str, Any]], rows: Sequence[Mapping[str, Any]], domains: Sequence[str]
) -> str:
    """Per method of one setting: Dice minus source-only's per domain, the worst domain against the target, and
    what the safeguard and ``safe`` did (from the per-case rows' adapter statistics)."""
    ref = methods[REFERENCE]
    columns = [*domains, "worst", "met", "fired", "fallback %", "safe: source %", "safe: step %", "safe: source weight"]
    table: dict[str, dict[str, Any]] = {}
    for method, block in ((m, b) for m, b in methods.items() if m != REFERENCE):
        diff = {d: block[d][MEAN_DICE] - ref[d][MEAN_DICE] for d in domains if d in block and d in ref}
        entry: dict[str, Any] = {d: format_number(v, 1) for d, v in diff.items()}
        worst = min(diff.values(), default=math.nan)
        entry["worst"] = format_number(worst, 1)
        last = str(max((int(k) for k in block.get("rounds", {})), default=1))
        if last != "1":
            final, ref_final = block["rounds"][last], ref["rounds"][last]
            worst_last = min(final[d][MEAN_DICE] - ref_final[d][MEAN_DICE] for d in domains if d in final)
            entry["worst"] += f" (round {last}: {format_number(worst_last, 1)})"
            worst = min(worst, worst_last)
        entry["met"] = "-" if not math.isfinite(worst) else ("met" if worst >= -MAX_LOSS_VS_SOURCE else "MISSED")
        mine = [r for r in rows if r["method"] == method]
        if any(StatKeys.SAFEGUARD in r for r in mine):
            fired = [r for r in mine if bool(r.get(StatKeys.SAFEGUARD))]
            entry["fired"] = f"{len(fired)} ({sum(r.get('safeguard_signal') == 'source_gap' for r in fired)})"
        share = {"fallback %": "safeguard_fallback", "safe: source %": "safe_source", "safe: step %": "safe_step"}
        for column, key in ((c, k) for c, k in share.items() if any(k in r for r in mine)):
            entry[column] = format_number(100.0 * np.mean([bool(r.get(key)) for r in mine]), 0)
        if any("safe_source" in r for r in mine):
            entry["safe: source weight"] = format_number(np.mean([float(r.get("safe_prior", 0.0)) for r in mine]), 2)
        table[method] = entry
    return markdown_table(table, columns, row_title="method", formatter=str)


def _header(meta: Mapping[str, Any], domains: Sequence[str]) -> list[str]:
    """Title, command, machine and data of ``results.md``."""
    env, cfg, volumes = meta["environment"], meta["config"], meta["dims"] == 3
    cuda = (
        f"; CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, TF32 allowed in convolutions "
        f"{env.get('cudnn_allow_tf32')} / matrix products {env.get('matmul_allow_tf32')}, cuDNN benchmark "
        f"{env.get('cudnn_benchmark')}"
        if "gpu" in env
        else ""
    )
    machine = (
        f"Machine: {env['cpu']} ({env['cpu_count']} CPUs, {env['torch_threads']} torch threads)"
        + (f", GPU {env['gpu']}" if "gpu" in env else "")
        + f"; device `{env['device']}`; torch {env['torch']}, MONAI {env['monai']}, Python {env['python']}. "
        f"Load average at start / end: {meta.get('loadavg_start')} / {meta.get('loadavg_end')}. "
        f"Total run time {meta.get('total_s', math.nan):.0f} s (source training {meta.get('train_s', 0.0):.0f} s)."
    )
    if not volumes:
        data = (
            f"Data: {cfg['data']} ({cfg['num_per_domain']} cases per target domain, domains {', '.join(domains)}), "
            f"images {cfg['image_size']}x{cfg['image_size']}; network `{cfg['network']}`, source weights "
            f"`{meta.get('checkpoint')}`; AMP {cfg['amp']}, channels-last {cfg['channels_last']}, "
            f"compile {cfg['compile']}{cuda}."
        )
        return ["# TTA benchmark results", "", f"Command: `{meta['command']}`", "", machine, "", data]
    window = meta.get("window", {})
    if cfg.get("vol_data"):
        volumes_from, trained = f"the datalist `{cfg['vol_data']}`, at most", "given"
    else:
        volumes_from = f"the embedded multi-site MR volumes (`monai_tta.data.generate_mr_sites`, seed {cfg['seed']}),"
        trained = f"trained on {cfg['vol_num_source']} generated source cases, their training split"
    data = (
        f"Data: {volumes_from} "
        f"{cfg['vol_cases']} test volumes per target site (sites {', '.join(domains)}), read and preprocessed by "
        f"the bundle `{VOLUME_BUNDLE.name}`'s `inference.json`; network `{meta.get('network')}` "
        f"({meta.get('network_parameters')} parameters), source weights `{meta.get('checkpoint')}` ({trained}). "
        "Every method runs through "
        "`monai_tta.inferers.SlidingWindowAdapter` with the bundle's window (the adapter's defaults for the rest): "
        f"{', '.join(f'{k}={v}' for k, v in window.items())}. Each method's run is its bundle's evaluation "
        "(`inference.json` + `evaluate.json`): the prediction is brought back to each input volume's own grid "
        f"(Invertd) and scored there against the label as stored. AMP {cfg['amp']}, compile {cfg['compile']}{cuda}."
    )
    return ["# TTA benchmark results: 3D volumes", "", f"Command: `{meta['command']}`", "", machine, "", data]


def _cost_text(meta: Mapping[str, Any]) -> str:
    cfg, volumes = meta["config"], meta["dims"] == 3
    cases = "volumes" if volumes else f"cases ({cfg['image_size']}x{cfg['image_size']})"
    ref = "source-only sliding-window inference (no adaptation)" if volumes else "source-only"
    return (
        f"Per method, its run in the {meta['cost_setting']} setting, the {cases} after the first "
        f"{meta['warmup_cases']} (warm-up; the `CaseCost` handler of the bundle evaluator, methods run one after the "
        "other): the median wall time and process CPU time (all threads) of the adapter's call over the cases without "
        f"a memory probe, and the median peak memory of the call, in this process ({meta.get('memory_kind')}), over "
        "the cases with one (every other case): *extra* = peak minus the memory in use just before the call, "
        "*total* = the peak (see `python -m monai_tta.bench --help`). Ratios are to "
        f"{ref} measured in the same run."
    )


def _markdown(result: Mapping[str, Any], images: Sequence[Path]) -> str:
    meta, summary, rows, domains = result["meta"], result["summary"], result["rows"], result["domains"]
    timing, columns = result["timing"], [*result["domains"], "overall"]
    lines = _header(meta, domains) + ["", "## Cost per " + ("volume" if meta["dims"] == 3 else "case"), ""]
    lines += [_cost_text(meta), "", cost_table(timing), "", "Methods:", ""]
    lines += [f"- `{m}`: {METHODS[m].description}" for m in timing if m in METHODS]
    targets = {
        t["target"]: {
            "measured": format_number(t["measured"], 2),
            "met": {None: "n/a", True: "yes"}.get(t["met"], "**no**"),
        }
        for t in result["targets"]
    }
    lines += ["", "## Targets", "", markdown_table(targets, ["measured", "met"], row_title="target", formatter=str)]
    for setting, methods in ((s, summary[s]) for s in SETTINGS if s in summary):
        title = f"{setting} ({meta['config']['rounds']} rounds, continual)" if setting == STREAM else setting
        lines += ["", f"## Dice (%), {title}: mean [95% bootstrap interval]", "", dice_table(methods, columns)]
        asd = {m: {c: b[c]["asd_mean"] for c in columns if "asd_mean" in b.get(c, {})} for m, b in methods.items()}
        if any(asd.values()):
            unit = "voxels" if meta["dims"] == 3 else "pixels"
            lines += ["", f"Average surface distance ({unit}), {setting}:", ""]
            lines.append(markdown_table(asd, columns, row_title="method"))
        if setting == STREAM:
            rounds = sorted({r for b in methods.values() for r in b.get("rounds", {})}, key=int)
            per_round = {m: {f"round {r}": b["rounds"][r]["overall"] for r in rounds} for m, b in methods.items()}
            lines += [
                "",
                "Dice (%) per round of the stream:",
                "",
                dice_table(per_round, [f"round {r}" for r in rounds]),
            ]
            fired = {
                m: {f"round {r}": b["rounds"][r]["overall"].get("safeguard_fired", 0) for r in rounds}
                for m, b in methods.items()
                if "safeguard_fired" in b.get("overall", {})
            }
            if fired:
                lines += ["", "Collapse safeguard: cases where it fired (returned to the source state), per round:", ""]
                lines.append(markdown_table(fired, [f"round {r}" for r in rounds], row_title="method", digits=0))
        if meta["dims"] == 3:  # per structure: the case report's means per domain of each method's rows
            lines += ["", f"Dice (%) per structure, {setting} (mean over the volumes of a site; overall: over sites):"]
            per_channel = {}
            for method in methods:
                means = summarize([r for r in rows if r["setting"] == setting and r["method"] == method])
                for channel in (k for k in means["overall"] if k.startswith("dice_") and k != MEAN_DICE):
                    per_channel[f"{method} {channel[5:]}"] = {c: means[c][channel] for c in columns if c in means}
            lines += ["", markdown_table(per_channel, columns, digits=1)]
        elif REFERENCE in methods and len(methods) > 1:
            lines += ["", f"## Against source-only, {setting}", "", _RELIABILITY_TEXT, ""]
            lines.append(reliability_table(methods, [r for r in rows if r["setting"] == setting], domains))
    if images:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images]
    return "\n".join(lines) + "\n"
