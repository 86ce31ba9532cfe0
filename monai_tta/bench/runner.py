"""Orchestration of the benchmark: every method in every setting over the target cases, then the timing and memory
phases, the summaries and the outputs."""

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
import torch.nn.functional as F
from torch import nn

from monai_tta.adapters.stats import StatKeys
from monai_tta.bench.data import prepare_copy, prepare_data, prepare_network, resolve_device, to_device
from monai_tta.bench.methods import REFERENCE, STREAM, make_adapter
from monai_tta.bench.outputs import write_outputs
from monai_tta.bench.probes import AMP, measure_memory, time_methods, timed_call
from monai_tta.bench.stats import check_targets, check_volume_targets, summarize_runs
from monai_tta.data.keys import DataKeys
from monai_tta.metrics import asd_per_channel, dice_per_channel

__all__ = ["run_cases", "timing_methods", "environment", "run_benchmark", "run_image_benchmark", "run_volume_benchmark"]

logger = logging.getLogger("monai_tta.bench")


def run_cases(
    method: str,
    setting: str,
    network: nn.Module,
    cases: Mapping[str, Sequence[Mapping[str, Any]]],
    device: torch.device,
    rounds: int = 3,
    image_size: int = 128,
    seed: int = 0,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
    compile_net: bool = False,
    compute_asd: bool = True,
    channel_names: Sequence[str] = ("disc", "cup"),
    window: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run one method in one setting over the target domains (``rounds`` passes for ``"stream"``); one row per case.

    The adapter gets a fresh copy of the source network and is told each case's domain before the call, as
    :class:`~monai_tta.engines.AdaptiveEvaluator` does. A case's prediction is its sigmoid channels at 0.5 (the
    bundles' multi-label outputs), scored per channel against its label's channels.

    Args:
        method: a key of :data:`~monai_tta.bench.methods.METHODS`.
        setting: one of :data:`~monai_tta.bench.methods.SETTINGS`.
        network: the source network (copied, never changed).
        cases: ``{domain: [case, ...]}`` (:func:`~monai_tta.bench.data.preprocess_cases`).
        device: where the method runs.
        rounds: passes over the domains of the ``stream`` setting.
        image_size: side of the images (VPTTA's prompt).
        seed: the adapter's seed.
        amp: autocast dtype around each call (``None``: none).
        channels_last: channels-last network and inputs.
        compile_net: ``torch.compile`` the network copy.
        compute_asd: also the average surface distance.
        channel_names: one name per output channel (CSV columns).
        window: for volumes, the sliding-window options (see :func:`~monai_tta.bench.methods.make_adapter`).
    """
    net = prepare_copy(network, channels_last, compile_net)
    adapter = make_adapter(method, setting, image_size, seed, window)
    n_rounds = rounds if setting == STREAM else 1
    rows: list[dict[str, Any]] = []
    for round_index in range(n_rounds):
        for domain, items in cases.items():
            for case in items:
                x = to_device(case["image"], device, channels_last)
                adapter.set_domain(domain)
                logits, ms = timed_call(adapter, x, net, device, amp)
                row: dict[str, Any] = {
                    "setting": setting,
                    "method": method,
                    "round": round_index + 1,
                    "position": len(rows),
                    DataKeys.DOMAIN.value: domain,
                    DataKeys.CASE_ID.value: case["case_id"],
                    "time_ms": ms,
                }
                label = case.get("label")
                if label is not None:
                    pred = (torch.sigmoid(logits.float()) > 0.5)[0].cpu()
                    dice = dice_per_channel(pred, label)
                    row.update({f"dice_{c}": v for c, v in zip(channel_names, dice)})
                    row["dice_mean"] = float(np.mean(dice))
                    if compute_asd:
                        asd = asd_per_channel(pred, label)
                        row.update({f"asd_{c}": v for c, v in zip(channel_names, asd)})
                        row["asd_mean"] = float(np.mean(asd))
                for key, value in adapter.last_stats.items():
                    if isinstance(value, (int, float)):  # flags (reset, safeguard, safe_source, ...) as 0 / 1
                        row[str(key)] = float(value)
                    elif key in (StatKeys.SAFE_CHOICE, StatKeys.SAFEGUARD_SIGNAL):
                        row[str(key)] = str(value)
                rows.append(row)
    return rows


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


def timing_methods(args: argparse.Namespace, device: torch.device) -> list[str]:
    """``--timing-methods``, or the methods plus source-only, the exact GraTa variants that differ from ``grata``
    on this device (the 6 views in one forward; on a GPU also: no CUDA graph, the reference's separate forwards, and
    the joint views), and TENT and GraTa without the collapse safeguard (the published update alone: the safeguard's
    source-gap probe adds one forward per case)."""
    if args.timing_methods:
        names = list(args.timing_methods)
    else:
        names = list(args.methods)
        if "grata" in names:
            variants = ["grata_batched"]
            variants += [] if device.type == "cpu" else ["grata_eager", "grata_separate", "grata_joint"]
            names += [v for v in variants if v not in names]
        names += [f"{m}_nosafeguard" for m in ("tent", "grata", "grata_approx") if m in args.methods]
    if REFERENCE not in names:
        names.insert(0, REFERENCE)
    return names


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Run the whole benchmark described by ``args`` (see :func:`~monai_tta.bench.cli.parse_args`) and write its
    outputs: the 2D images into ``--out``, the 3D volumes into ``<out>/3d`` (``--dims``).

    Returns:
        ``{"2d": ..., "3d": ...}`` for the dimensions run, each ``{"summary", "timing", "targets", "rows",
        "files"}``.
    """
    if args.threads:
        torch.set_num_threads(int(args.threads))
    device = resolve_device(args.device)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    args.cache = str(Path(args.cache) if args.cache else Path(args.out) / "cache")
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    ignore = Path(args.cache) / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# generated data and trained checkpoints of the benchmark\n*\n")
    results = {}
    if 2 in args.dims:
        results["2d"] = run_image_benchmark(args, device)
    if 3 in args.dims:
        results["3d"] = run_volume_benchmark(args, device)
    return results


def run_image_benchmark(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The 2D benchmark: every method in every setting on the fundus images, then the timing and memory phases.

    Returns:
        ``{"summary", "timing", "targets", "rows", "files"}``.
    """
    start, loadavg_start = time.perf_counter(), _loadavg()
    amp = AMP[args.amp]
    data = prepare_data(args)
    train_start = time.perf_counter()
    network, checkpoint = prepare_network(args, data, device)
    train_s = time.perf_counter() - train_start
    cases = data["cases"]
    logger.info(f"{sum(len(v) for v in cases.values())} target cases in {list(cases)}; device {device}")
    options = {"seed": args.seed, "amp": amp, "channels_last": args.channels_last, "compile_net": args.compile}
    rows = _dice_runs(
        args.methods,
        [] if args.timing_only else args.settings,
        network,
        cases,
        device,
        rounds=args.rounds,
        image_size=args.image_size,
        compute_asd=not args.no_asd,
        channel_names=data["channel_names"],
        **options,
    )
    first = next(iter(cases.values()))[0]["image"]
    timing_size = args.timing_size or args.image_size
    image = (
        first
        if timing_size == first.shape[-1]
        else F.interpolate(first, size=(timing_size, timing_size), mode="bilinear")
    )
    timing, calls = _cost_phase(
        timing_methods(args, device), network, image, device, args.timing_reps, not args.no_memory, **options
    )
    domains = list(cases)
    summary = summarize_runs(rows, domains)
    targets = check_targets(timing, summary, device)
    meta = _meta(args, device, checkpoint, timing, rows, args.methods, start, loadavg_start, train_s)
    meta["timing_size"] = timing_size
    out = Path(args.out)
    files = write_outputs(out, rows, summary, timing, calls, targets, meta, domains, plots=not args.no_plots)
    logger.info(f"wrote {', '.join(p.name for p in files)} to {out} in {meta['total_s']:.0f} s")
    return {"summary": summary, "timing": timing, "targets": targets, "rows": rows, "files": files}


def run_volume_benchmark(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The 3D benchmark: every ``--vol-methods`` method through the sliding-window adapter on the MR sites' test
    volumes (Dice per site), then the timing and memory phases on one volume, as ratios to source-only
    sliding-window inference; written to ``--vol-out`` (default ``<out>/3d``).

    Returns:
        ``{"summary", "timing", "targets", "rows", "files"}``.
    """
    from monai_tta.bench.volumes import adapter_options, prepare_volume_network, prepare_volumes

    start, loadavg_start = time.perf_counter(), _loadavg()
    amp = AMP[args.amp]
    data = prepare_volumes(args, device)
    train_start = time.perf_counter()
    network, checkpoint = prepare_volume_network(args, data, device)
    train_s = time.perf_counter() - train_start
    cases, window = data["cases"], data["window"]
    logger.info(f"{sum(len(v) for v in cases.values())} target volumes in {list(cases)}; window {window}")
    options = {"seed": args.seed, "amp": amp, "channels_last": False, "compile_net": args.compile, "window": window}
    roi = window.get("roi_size")
    rows = _dice_runs(
        args.vol_methods,
        [] if args.timing_only else args.vol_settings,
        network,
        cases,
        device,
        rounds=args.rounds,
        image_size=int(roi[0]) if isinstance(roi, (list, tuple)) else int(roi or 0),
        compute_asd=False,
        channel_names=data["channel_names"],
        **options,
    )
    volume = next(iter(cases.values()))[0]["image"]
    names = [REFERENCE] + [m for m in args.vol_methods if m != REFERENCE]
    timing, calls = _cost_phase(
        names, network, volume, device, args.vol_timing_reps, not args.no_memory, warmup=1, **options
    )
    domains = list(cases)
    summary = summarize_runs(rows, domains)
    targets = check_volume_targets(timing, device)
    meta = _meta(args, device, checkpoint, timing, rows, args.vol_methods, start, loadavg_start, train_s)
    meta.update(
        volume_shape=list(volume.shape[2:]),
        window=adapter_options(window),
        network=type(network).__name__,
        network_parameters=sum(p.numel() for p in network.parameters()),
        datalist=str(data["datalist"]),
    )
    out = Path(args.vol_out) if args.vol_out else Path(args.out) / "3d"
    files = write_outputs(
        out, rows, summary, timing, calls, targets, meta, domains, plots=not args.no_plots, volumes=True
    )
    logger.info(f"wrote {', '.join(p.name for p in files)} to {out} in {meta['total_s']:.0f} s")
    return {"summary": summary, "timing": timing, "targets": targets, "rows": rows, "files": files}


def _dice_runs(
    methods: Sequence[str],
    settings: Sequence[str],
    network: nn.Module,
    cases: Mapping[str, Sequence[Mapping[str, Any]]],
    device: torch.device,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """:func:`run_cases` for every setting and method, logged; the rows of all of them."""
    rows: list[dict[str, Any]] = []
    for setting in settings:
        for method in methods:
            t0 = time.perf_counter()
            new = run_cases(method, setting, network, cases, device, **kwargs)
            rows += new
            dice = np.mean([r["dice_mean"] for r in new]) if new and "dice_mean" in new[0] else math.nan
            logger.info(f"{setting:>10} {method:>14}: Dice {dice:.2f}, {time.perf_counter() - t0:.1f} s")
    return rows


def _cost_phase(
    names: Sequence[str],
    network: nn.Module,
    image: torch.Tensor,
    device: torch.device,
    reps: int,
    memory: bool,
    warmup: int = 2,
    seed: int = 0,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
    compile_net: bool = False,
    window: Mapping[str, Any] | None = None,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """The timing phase (:func:`~monai_tta.bench.probes.time_methods`) and the memory probes (unless ``memory`` is
    false) of ``names`` on ``image``: per method its times and peak memory, and every timed call."""
    timing, calls = time_methods(
        names,
        network,
        image,
        device,
        reps=reps,
        warmup=warmup,
        seed=seed,
        amp=amp,
        channels_last=channels_last,
        compile_net=compile_net,
        window=window,
    )
    if memory:
        peaks = measure_memory(
            names, network, image, device, seed=seed, amp=amp, channels_last=channels_last, window=window
        )
    else:
        peaks = {
            m: {"memory_kind": "not measured", "peak_extra_mb": math.nan, "peak_total_mb": math.nan} for m in timing
        }
    for name in timing:
        timing[name].update(peaks[name])
    for name, t in timing.items():
        logger.info(f"timing {name:>14}: {t['median_ms']:.1f} ms/case, peak extra {t['peak_extra_mb']:.1f} MiB")
    return timing, calls


def _meta(
    args: argparse.Namespace,
    device: torch.device,
    checkpoint: Path,
    timing: Mapping[str, Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    start: float,
    loadavg_start: list[float] | None,
    train_s: float,
) -> dict[str, Any]:
    """The command, machine, configuration and run times recorded with the results."""
    run_time = {m: float(np.median([r["time_ms"] for r in rows if r["method"] == m])) for m in methods if rows}
    return {
        "command": "python -m monai_tta.bench" + ("" if not args.argv else " " + shlex.join(args.argv)),
        "environment": environment(device),
        "config": {k: v for k, v in vars(args).items() if k != "argv"},
        "checkpoint": str(checkpoint),
        "memory_kind": next(iter(timing.values()))["memory_kind"] if timing else "unavailable",
        "run_time_ms": run_time,
        "loadavg_start": loadavg_start,
        "loadavg_end": _loadavg(),
        "train_s": train_s,
        "total_s": time.perf_counter() - start,
    }
