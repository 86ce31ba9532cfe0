"""Where an adapter's time goes: torch.profiler over a few calls of each benchmark method on one random image.

    python tools/profile_adapters.py --device cuda --network resunet34 --size 512 --methods source_only tent grata

For each method it prints the wall time per call, the time the device spent in kernels per call (on CUDA) and their
ratio (a low ratio means the call is bound by the host: Python, launches, synchronisations), then the operators that
take the most host time. ``--out FILE`` also writes the full tables. The weights are random (the benchmark's source
checkpoint is not needed): the cost of a call does not depend on them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from monai_tta.bench import METHODS, make_adapter
from monai_tta.networks import ResUNet, SmallUNet


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--network", default="resunet34", choices=("small", "resunet34"))
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--methods", nargs="+", default=["source_only", "tent", "grata", "grata_approx", "vptta"])
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--rows", type=int, default=12)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    for name in args.methods:
        if name not in METHODS:
            p.error(f"unknown method {name!r}; available: {list(METHODS)}")
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = ResUNet(in_channels=3, out_channels=2) if args.network == "resunet34" else SmallUNet(3, 2)
    net = net.to(device).eval()
    x = torch.rand(1, 3, args.size, args.size, device=device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    report = []
    for name in args.methods:
        adapter = make_adapter(name, "continual", args.size, 0)
        for _ in range(3):
            adapter(x, net)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with profile(activities=activities) as prof:
            for _ in range(args.calls):
                adapter(x, net)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        wall = (time.perf_counter() - start) * 1000 / args.calls
        events = prof.key_averages()
        # as the profiler's own "Self CUDA time total": device-side events only (the CPU-side operators carry their
        # kernels' time as well, so summing over every event counts it twice)
        device_events = [e for e in events if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
        kernel_ms = sum(e.self_device_time_total for e in device_events) / 1000 / args.calls
        launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel")) / args.calls
        head = (
            f"{name}: {wall:.1f} ms/call (profiled), device kernels {kernel_ms:.1f} ms/call "
            f"({100 * kernel_ms / wall:.0f}% busy), {launches:.0f} kernel launches/call"
        )
        print(head)
        table = events.table(sort_by="self_cpu_time_total", row_limit=args.rows)
        report += [head, table]
        print("\n".join(table.splitlines()[: args.rows + 4]))
    if args.out:
        Path(args.out).write_text("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
