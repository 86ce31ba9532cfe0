"""Soak run: thousands of small images through each adapter in one continual stream; memory and time must stay flat.

``python -m monai_tta.bench --soak 3000`` streams ``--soak`` images (``--soak-size`` pixels a side) through each method
of ``--soak-methods`` in the ``continual`` setting (never reset: every case builds on the state the previous left)
and writes ``soak.md`` and ``soak.json`` to ``--out``. Per block of ``--soak-block`` cases it records the median time
per case and the process's resident set size (RSS, ``/proc/self/status``) at the end of the block. The images are a
pool of embedded synthetic fundus cases (every target domain, generated in memory, converted once) cycled over the
stream: the soak looks for leaks and slow-downs of the adapters (state, statistics, guards), not for Dice. The
network is the small UNet with its initial weights (what it computes does not change its cost).
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from monai_tta.adapters.settings import Setting
from monai_tta.bench.methods import method_parser
from monai_tta.data import CaseStream, GuardedDataset
from monai_tta.data.synthetic import SOURCE_DOMAIN, SYNTHETIC_FUNDUS_DOMAINS, synthesize_fundus_case
from monai_tta.handlers import CaseCost
from monai_tta.handlers.case_cost import rss_mib
from monai_tta.io import atomic_write_json, atomic_write_text
from monai_tta.networks import SmallUNet
from monai_tta.reports import markdown_table

__all__ = ["SOAK_METHODS", "image_pool", "soak_method", "run_soak"]

#: methods of the soak run by default.
SOAK_METHODS = ("source_only", "tent", "grata")


def image_pool(size: int, per_domain: int = 4, seed: int = 0) -> list[torch.Tensor]:
    """``per_domain`` synthetic fundus images of every target domain, ``(1, 3, size, size)`` in ``[0, 1]``."""
    pool = []
    for domain in SYNTHETIC_FUNDUS_DOMAINS:
        if domain == SOURCE_DOMAIN:
            continue
        for i in range(per_domain):
            image, _ = synthesize_fundus_case(domain, i, image_size=size, seed=seed)
            x = torch.as_tensor(image, dtype=torch.float32)
            x = x.permute(2, 0, 1) if x.shape[-1] == 3 else x
            pool.append((x / max(float(x.max()), 1e-6))[None].contiguous())
    return pool


def soak_method(name: str, n_images: int, pool: Sequence[torch.Tensor], block: int, seed: int = 0) -> dict[str, Any]:
    """Stream ``n_images`` (cycling over ``pool``) through method ``name``'s bundle evaluator (continual, no report,
    no post-processing); per-block figures from a :class:`~monai_tta.handlers.CaseCost` (the time of each case's
    adapter call) and the process's RSS.

    Returns:
        ``{"blocks": [{"cases", "median_ms", "rss_mib"}...], "rss_start_mib", "nonfinite"}``.
    """
    from ignite.engine import Events

    torch.manual_seed(seed)
    stream = [{"image": pool[i % len(pool)][0], "domain": "soak", "case_id": str(i)} for i in range(n_images)]
    overrides = {
        "image_size": int(pool[0].shape[-1]),
        "network": SmallUNet(in_channels=3, out_channels=2).eval(),
        "device": torch.device("cpu"),
        "dataloader": CaseStream(GuardedDataset(stream)),
        "handlers": [],
        "postprocessing": None,
        "evaluator#key_val_metric": None,
    }
    evaluator = method_parser(name, Setting.CONTINUAL.value, 2, overrides, seed).get_parsed_content("evaluator")
    cost = CaseCost(torch.device("cpu"))
    cost.attach(evaluator)
    result: dict[str, Any] = {"blocks": [], "rss_start_mib": math.nan, "nonfinite": 0}

    def record(engine: Any) -> None:
        done = engine.state.iteration
        result["nonfinite"] += bool(engine.state.adapt.get("nonfinite", False))
        if done == 1:  # after the first call (norms converted, optimizer built)
            result["rss_start_mib"] = rss_mib()
        if done % block == 0 or done == n_images:
            times = [r["time_ms"] for r in cost.rows[len(result["blocks"]) * block :]]
            result["blocks"].append({"cases": done, "median_ms": statistics.median(times), "rss_mib": rss_mib()})

    evaluator.add_event_handler(Events.ITERATION_COMPLETED, record)
    evaluator.run()
    return result


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    """Run the soak of every method of ``args.soak_methods`` and write ``soak.md`` / ``soak.json`` to ``args.out``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    pool = image_pool(args.soak_size, seed=args.seed)
    results = {m: soak_method(m, args.soak, pool, args.soak_block, args.seed) for m in args.soak_methods}
    out = Path(args.out)
    command = "python -m monai_tta.bench " + " ".join(args.argv)
    summary = {}
    for name, r in results.items():
        first, last = r["blocks"][0], r["blocks"][-1]
        summary[name] = {
            "first block ms/case": first["median_ms"],
            "last block ms/case": last["median_ms"],
            "last / first time": last["median_ms"] / first["median_ms"],
            "RSS after 1st block MiB": first["rss_mib"],
            "RSS at end MiB": last["rss_mib"],
            "RSS growth MiB": last["rss_mib"] - first["rss_mib"],
            "skipped updates": r["nonfinite"],
        }
    cols = list(next(iter(summary.values())))
    lines = [
        "# Soak run: a long continual stream of small images",
        "",
        f"Command (from the repository root): `{command}`",
        "",
        f"{args.soak} images of {args.soak_size}x{args.soak_size} per method, continual setting (never reset), torch "
        f"threads {torch.get_num_threads()}, one process, methods run one after the other. Times are medians over "
        f"blocks of {args.soak_block} cases (a shared machine: compare the first and last block of a method, not "
        "methods); RSS is the resident set size of the process at the end of a block (after the first block, "
        "so that the first-use allocations are not counted as growth).",
        "",
        markdown_table(summary, cols, row_title="method"),
        "",
        "Per block (cases done: median ms per case / RSS MiB):",
        "",
    ]
    for name, r in results.items():
        cells = ", ".join(f"{b['cases']}: {b['median_ms']:.1f} / {b['rss_mib']:.0f}" for b in r["blocks"])
        lines.append(f"- {name}: {cells}")
    atomic_write_text("\n".join(lines) + "\n", out / "soak.md")
    atomic_write_json({"command": command, "results": results, "summary": summary}, out / "soak.json")
    print("\n".join(lines))
    return results
