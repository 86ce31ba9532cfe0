"""Orchestration of the benchmark: every method in every setting over the target cases, each run the method's own
bundle evaluator (:class:`~monai_tta.engines.AdaptiveEvaluator` built from its configs, the setting and the variant
as overrides) with a :class:`~monai_tta.handlers.CaseCost` handler, then the cost per method, the summaries and the
outputs."""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import shlex
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_tta.bench.data import WINDOW_RECORD, prepare, prepare_copy
from monai_tta.bench.methods import REFERENCE, STREAM, make_adapter, method_parser
from monai_tta.bench.outputs import write_outputs
from monai_tta.bench.stats import check_targets, summarize_runs
from monai_tta.data import CaseStream, GuardedDataset
from monai_tta.data.keys import DataKeys
from monai_tta.handlers import CaseCost
from monai_tta.handlers.case_cost import fix_mmap_threshold

__all__ = ["AMP", "WARMUP", "run_cases", "cost_per_method", "environment", "run_benchmark", "run_dims"]

#: ``--amp`` names -> the autocast dtype (``None``: no autocast).
AMP: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: spatial dimensions -> cases at the start of each run left out of the cost medians (warm-up: one-off work).
WARMUP = {2: 2, 3: 1}

logger = logging.getLogger("monai_tta.bench")


def run_cases(
    method: str,
    setting: str,
    prepared: Mapping[str, Any],
    device: torch.device,
    dims: int = 2,
    rounds: int = 3,
    seed: int = 0,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
    compile_net: bool = False,
    compute_asd: bool = True,
    output_dir: str | Path | None = None,
    memory: bool = False,
) -> list[dict[str, Any]]:
    """Run one method in one setting over the target domains (``rounds`` passes for ``"stream"``) with the method's
    bundle evaluator; one row per case (the bundle's :class:`~monai_tta.handlers.CaseReport` row, with the setting,
    the round, the position in the stream and the cost of the adapter's call).

    The evaluator is the bundle's (``inference.json`` + ``evaluate.json``) with a fresh copy of the source network,
    the preprocessed cases of ``prepared`` as its stream, the report as its only handler, a
    :class:`~monai_tta.handlers.CaseCost` (``time_ms`` and ``cpu_ms`` of every case and, with ``memory``,
    ``peak_extra_mb`` and ``peak_total_mb`` of every other case, from the first), and no mask saving.

    Args:
        method: a key of :data:`~monai_tta.bench.methods.METHODS`.
        setting: one of :data:`~monai_tta.bench.methods.SETTINGS`.
        prepared: what :func:`~monai_tta.bench.data.prepare` returned.
        device: where the method runs.
        dims: 2 (fundus images) or 3 (MR volumes, through the bundle's sliding window).
        rounds: passes over the domains of the ``stream`` setting.
        seed: the adapter's seed.
        amp: autocast dtype around each call (``None``: none; MONAI's evaluator applies it on CUDA).
        channels_last: channels-last network copy.
        compile_net: ``torch.compile`` the network copy.
        compute_asd: also the average surface distance (2D).
        output_dir: folder of the run's report (``cases.csv``, summary); default a temporary one under the cache.
        memory: also the peak memory of every other case's call (cases 0, 2, 4, ...).
    """
    n_rounds = rounds if setting == STREAM else 1
    stream = [item for _ in range(n_rounds) for items in prepared["cases"].values() for item in items]
    overrides = {
        **prepared["overrides"],
        **{f"inferer#{k}": v for k, v in prepared.get("window", {}).items()},
        "device": device,
        "method": method,
        "output_dir": str(output_dir or Path(prepared["cache"]) / "runs" / f"{dims}d" / setting),
        "network": prepare_copy(prepared["network"], channels_last, compile_net),
        "dataloader": CaseStream(GuardedDataset(stream)),
        "handlers": "$[@report]",
        "report#plots": False,
        "evaluator#amp": amp is not None,
        "evaluator#amp_kwargs": {"dtype": amp} if amp is not None else None,
    }
    if dims == 2:
        overrides["report#compute_asd"] = bool(compute_asd)
    parser = method_parser(method, setting, dims, overrides, seed)
    transforms = parser.get("postprocessing#transforms")
    for i, step in enumerate(transforms):
        if isinstance(step, Mapping) and step.get("_target_") == "SaveImaged":
            parser[f"postprocessing#transforms#{i}#_disabled_"] = True
    evaluator = parser.get_parsed_content("evaluator")
    cost = CaseCost(device, memory_every=2 if memory else 0)
    cost.attach(evaluator)
    evaluator.run()
    per_round = len(stream) // n_rounds
    rows = []
    for position, (row, spent) in enumerate(zip(parser.get_parsed_content("report").rows, cost.rows)):
        head = {"setting": setting, "method": method, "round": position // per_round + 1, "position": position}
        head.update({DataKeys.DOMAIN.value: row[DataKeys.DOMAIN], DataKeys.CASE_ID.value: row[DataKeys.CASE_ID]})
        kind = {"memory_kind": cost.memory_kind} if memory else {}
        rows.append({**head, **spent, **kind, **{k: v for k, v in row.items() if k not in head}})
    return rows


def cost_per_method(rows: Sequence[Mapping[str, Any]], warmup: int, device: torch.device) -> dict[str, dict[str, Any]]:
    """The cost per case of each method from the rows of its cost run (one setting per method), over the run's cases
    after its first ``warmup`` (one-off work: the optimizer, the norm conversion, CUDA graphs, lazy buffers; the last
    case alone when the run has no more): the median, mean, minimum and maximum wall time and the median CPU time of
    those without a memory probe (a probe slows the call it measures), the median peak memory of those with one. On
    CUDA the peak memory of a warm-up case counts when larger (CUDA graphs allocate their pool in the first call and
    keep it). A run too short to have both kinds of case after its warm-up takes the missing kind from its other cases.

    Returns:
        per method: ``cases`` and ``memory_cases`` (how many the medians cover), ``median_ms``, ``mean_ms``,
        ``min_ms``, ``max_ms``, ``median_cpu_ms``, ``memory_kind``, ``peak_extra_mb``, ``peak_total_mb``.
    """
    cost: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        rest, first = mine[warmup:] or mine[-1:], mine[: min(warmup, len(mine) - 1)]
        timed = [r for r in rest if "peak_extra_mb" not in r] or rest
        probed = [r for r in rest if "peak_extra_mb" in r] or [r for r in mine if "peak_extra_mb" in r][-1:]
        times = [r["time_ms"] for r in timed]
        entry = {"cases": len(timed), "memory_cases": len(probed)}
        entry.update(median_ms=float(np.median(times)), mean_ms=float(np.mean(times)))
        entry.update(min_ms=float(np.min(times)), max_ms=float(np.max(times)))
        entry.update(
            median_cpu_ms=float(np.median([r["cpu_ms"] for r in timed])),
            memory_kind=mine[0].get("memory_kind", "not measured"),
        )
        for key in ("peak_extra_mb", "peak_total_mb"):
            entry[key] = float(np.median([r[key] for r in probed])) if probed else math.nan
            if device.type == "cuda" and any(key in r for r in first):
                entry[key] = max(entry[key], *(r[key] for r in first if key in r))
        cost[method] = entry
    return cost


def environment(device: torch.device) -> dict[str, Any]:
    """The machine and software of the run (CPU, threads, torch, MONAI, Python; on CUDA the GPU and its flags)."""
    import monai

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "device": str(device),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        # float32 convolutions and matrix products may run in TF32 on Ampere and later: record what this run allowed
        env["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
        env["matmul_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
        env["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
    return env


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _window_record(window: Mapping[str, Any]) -> dict[str, Any]:
    """Every option of the sliding-window adapter built with ``window`` (its defaults included), as recorded."""
    sw = make_adapter(REFERENCE, "domain", 0, window=window)
    options = {name: getattr(sw, name) for name in WINDOW_RECORD}
    return {k: v if isinstance(v, (int, float, bool, type(None), list)) else str(v) for k, v in options.items()}


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Run the whole benchmark described by ``args`` (see :func:`~monai_tta.bench.cli.parse_args`) and write its
    outputs: the 2D images into ``--out``, the 3D volumes into ``<out>/3d`` (``--dims``).

    Returns:
        ``{"2d": ..., "3d": ...}`` for the dimensions run, each ``{"summary", "timing", "targets", "rows",
        "files"}``.
    """
    if args.threads:
        torch.set_num_threads(int(args.threads))
    device = (
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if args.device == "auto"
        else torch.device(args.device)
    )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available here.")
    if not args.no_memory:
        fix_mmap_threshold()  # before the runs allocate: the resident set then follows the live tensors
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    args.cache = str(Path(args.cache) if args.cache else Path(args.out) / "cache")
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    ignore = Path(args.cache) / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# generated data and trained checkpoints of the benchmark\n*\n")
    return {f"{dims}d": run_dims(args, dims, device) for dims in args.dims}


def run_dims(args: argparse.Namespace, dims: int, device: torch.device) -> dict[str, Any]:
    """The benchmark of one dimensionality: every method in every setting on the fundus images (2) or, through the
    3D bundle's sliding window, on the MR sites' volumes (3), with the cost per case of each method from its run in
    the cost setting (``domain``, else the first setting; :func:`cost_per_method`; peak memory probed in that run
    only); written to ``--out`` (2D) or ``--vol-out`` (default ``<out>/3d``).

    Returns:
        ``{"rows", "summary", "timing", "targets", "meta", "domains", "files"}``.
    """
    start, loadavg_start = time.perf_counter(), _loadavg()
    prepared = {**prepare(args, dims, device), "cache": args.cache}
    train_s = time.perf_counter() - start
    cases, window = prepared["cases"], prepared["window"] or None
    logger.info(f"{sum(len(v) for v in cases.values())} target cases in {list(cases)}; device {device}")
    methods = args.methods if dims == 2 else args.vol_methods
    settings = args.settings if dims == 2 else args.vol_settings
    # every case adapts from the source model there (no safeguard fallback can stand in for the method)
    cost_setting = "episodic" if "episodic" in settings else settings[0]
    options = {
        "seed": args.seed,
        "amp": AMP[args.amp],
        "compile_net": args.compile,
        "channels_last": args.channels_last and dims == 2,
        "compute_asd": not args.no_asd,
    }
    rows: list[dict[str, Any]] = []
    for setting, method in ((s, m) for s in settings for m in methods):
        t0 = time.perf_counter()
        memory = setting == cost_setting and not args.no_memory
        new = run_cases(method, setting, prepared, device, dims, args.rounds, memory=memory, **options)
        rows += new
        dice = np.mean([r.get("dice_mean", math.nan) for r in new]) if new else math.nan
        logger.info(f"{setting:>10} {method:>14}: Dice {dice:.2f}, {time.perf_counter() - t0:.1f} s")
    warmup = WARMUP[dims]
    timing = cost_per_method([r for r in rows if r["setting"] == cost_setting], warmup, device)
    for name, t in timing.items():
        logger.info(f"cost {name:>14}: {t['median_ms']:.1f} ms/case, peak extra {t['peak_extra_mb']:.1f} MiB")
    domains = list(cases)
    summary = summarize_runs(rows, domains)
    meta = {
        "dims": dims,
        "command": "python -m monai_tta.bench" + ("" if not args.argv else " " + shlex.join(args.argv)),
        "environment": environment(device),
        "config": {k: v for k, v in vars(args).items() if k != "argv"},
        "checkpoint": str(prepared["checkpoint"]),
        "cost_setting": cost_setting,
        "warmup_cases": warmup,
        "memory_kind": next(iter(timing.values()))["memory_kind"] if timing else "unavailable",
        "loadavg_start": loadavg_start,
        "loadavg_end": _loadavg(),
        "train_s": train_s,
    }
    if dims == 3:
        network = prepared["network"]
        meta.update(volume_shape=list(next(iter(cases.values()))[0]["image"].shape[1:]))
        meta.update(window=_window_record(window or {}), network=type(network).__name__)
        meta.update(network_parameters=sum(p.numel() for p in network.parameters()), datalist=str(prepared["datalist"]))
    meta["total_s"] = time.perf_counter() - start
    targets = check_targets(timing, summary, device, dims)
    result = {"rows": rows, "summary": summary, "timing": timing, "targets": targets, "meta": meta, "domains": domains}
    out = Path(args.out) if dims == 2 else (Path(args.vol_out) if args.vol_out else Path(args.out) / "3d")
    result["files"] = write_outputs(out, result, plots=not args.no_plots)
    logger.info(f"wrote {', '.join(p.name for p in result['files'])} to {out} in {meta['total_s']:.0f} s")
    return result
