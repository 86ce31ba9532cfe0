"""The main job: GraTa, TENT and source-only on the embedded multi-domain data, per-domain Dice side by side.

Run from the repository root::

    python -m monai_tta.demo

It runs the generated bundles ``bundles/source_only_fundus_segmentation``, ``bundles/tent_fundus_segmentation`` and
``bundles/grata_fundus_segmentation``, all on the GraTa bundle's data, source model and output folder. On first use
that bundle generates the embedded synthetic fundus domains and, because the demo opts in (``train_if_missing``; a
bundle run alone does not train), trains the source model (``models/model.pt``); later runs reuse both (and a run
resumes after its last finished case). It prints a Markdown table of mean Dice (disc and cup averaged, %) per target
domain and writes it, with the command and a plot, to ``docs/results/``.

The table is reproducible bit for bit on a given CPU with a given torch thread count: ``--threads`` (default 1) is
set before anything runs, because the source training's floating-point sums are split across threads and a
different split trains a (slightly) different model (measured: ``docs/results/main_job.md``). ``--fresh`` runs in a
new temporary folder (data generated and model trained from scratch, as a fresh clone does) and ``--check`` compares
the table it prints with the one in ``docs/results/main_job.md`` (exit status 1 when they differ).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from monai_tta.io import atomic_write_text
from monai_tta.reports import MEAN_DICE, markdown_table, plot_domain_dice
from monai_tta.zoo.run import run_bundle

__all__ = ["METHODS", "run_demo", "table_of", "main"]

#: method name -> its generated bundle (in the bundles folder).
METHODS = {
    "SourceOnly": "source_only_fundus_segmentation",
    "TENT": "tent_fundus_segmentation",
    "GraTa": "grata_fundus_segmentation",
}
#: the bundle whose data, source model and output folder every method shares.
SHARED = "grata_fundus_segmentation"
_TABLE = re.compile(r"^\|.*\|$", re.MULTILINE)


def table_of(markdown: str) -> str:
    """The first Markdown table of ``markdown`` (its lines starting and ending with ``|``)."""
    lines = _TABLE.findall(markdown)
    return "\n".join(lines)


def run_demo(
    bundles_dir: str | Path = "bundles",
    methods: Sequence[str] = tuple(METHODS),
    overrides: dict | None = None,
    results_dir: str | Path | None = "docs/results",
    command: str = "python -m monai_tta.demo",
) -> dict[str, dict[str, dict[str, float]]]:
    """Run each method's bundle and collect the per-domain summaries.

    Args:
        bundles_dir: folder holding the bundles.
        methods: names from :data:`METHODS`, in table order.
        overrides: bundle config overrides applied to every run (e.g. ``{"num_per_domain": 8}``).
        results_dir: where to write ``main_job.md`` and ``main_job.png`` (``None``: write nothing).
        command: the command line recorded with the results.

    Returns:
        ``{method: {domain: {column: value}}}`` as written by :class:`~monai_tta.handlers.CaseReport`.

    Raises:
        ValueError: for an unknown method name.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; available: {list(METHODS)}.")
    bundles = Path(bundles_dir)
    shared = (bundles / SHARED).resolve()
    common = {
        "dataset_dir": str(shared / "data" / "synthetic_fundus"),
        "source_checkpoint": str(shared / "models" / "model.pt"),
        "output_dir": str(shared / "eval"),
        "train_if_missing": True,  # the main job opts in: the first run trains the source model (bundles do not)
        **dict(overrides or {}),
    }
    summaries, seconds = {}, {}
    for method in methods:
        start = time.perf_counter()
        workflow = run_bundle(
            bundles / METHODS[method], ["inference.json", "evaluate.json"], common, logging_file=False
        )
        seconds[method] = time.perf_counter() - start
        output_dir = Path(workflow.parser.get_parsed_content("output_dir")) / method
        summaries[method] = json.loads((output_dir / "summary.json").read_text())[method]
        print(f"{method}: done in {seconds[method]:.0f} s, per-case results in {output_dir / 'cases.csv'}", flush=True)
    domains = [d for d in next(iter(summaries.values())) if d != "overall"] + ["overall"]
    table = {m: {d: s[d][MEAN_DICE] for d in domains} for m, s in summaries.items()}
    text = markdown_table(table, domains)
    print("\nMean Dice (%, disc and cup averaged) per target domain; 'overall' is the mean over domains:\n")
    print(text)
    if results_dir is not None:
        out = Path(results_dir)
        out.mkdir(parents=True, exist_ok=True)
        plot_domain_dice(table, domains, out / "main_job.png", title="Mean Dice per target domain")
        timing = ", ".join(f"{m} {s:.0f} s" for m, s in seconds.items())
        atomic_write_text(
            "# Main job: source-only vs TENT vs GraTa on the embedded synthetic fundus domains\n\n"
            f"Command (from the repository root): `{command}`\n\n"
            "Mean Dice (%, optic disc and cup averaged) per target domain, one run; 'overall' is the mean over "
            "domains (GraTa's averaging). Each domain is adapted separately (reset at each domain change).\n\n"
            f"{text}\n\nTorch CPU threads: {torch.get_num_threads()} (the table is reproducible for a given CPU and "
            "thread count; `python -m monai_tta.demo --fresh --check` reruns from scratch and compares).\n\n"
            f"Wall time of each run on this machine (includes data generation and source training on first use): "
            f"{timing}.\n\n![Dice per domain](main_job.png)\n",
            out / "main_job.md",
        )
    return summaries


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles-dir", default="bundles", help="folder holding the bundles (default: bundles)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--num-per-domain", type=int, default=None, help="cases per generated domain")
    parser.add_argument("--image-size", type=int, default=None, help="image size of the generated data")
    parser.add_argument("--source-epochs", type=int, default=None, help="epochs of the source training on first use")
    parser.add_argument("--results-dir", default="docs/results", help="where to write the table ('' for nowhere)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: reproducible)")
    parser.add_argument("--fresh", action="store_true", help="generate data and train in a new temporary folder")
    parser.add_argument("--check", action="store_true", help="compare the table with docs/results/main_job.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
    torch.set_num_threads(args.threads)
    overrides = {}
    if args.num_per_domain is not None:
        overrides["num_per_domain"] = args.num_per_domain
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    if args.source_epochs is not None:
        overrides["source_training#epochs"] = args.source_epochs
    command = "python -m monai_tta.demo " + " ".join(sys.argv[1:] if argv is None else argv)
    tmp = tempfile.TemporaryDirectory(prefix="monai_tta_demo_") if args.fresh else None
    if tmp is not None:
        root = Path(tmp.name)
        overrides.update(
            dataset_dir=str(root / "data"), source_checkpoint=str(root / "model.pt"), output_dir=str(root / "eval")
        )
    committed = Path(args.results_dir or "docs/results") / "main_job.md"
    expected = table_of(committed.read_text()) if args.check and committed.is_file() else None
    results_dir = None if args.check or not args.results_dir else args.results_dir
    summaries = run_demo(args.bundles_dir, args.methods, overrides, results_dir, command.strip())
    if tmp is not None:
        tmp.cleanup()
    if args.check:
        domains = [d for d in next(iter(summaries.values())) if d != "overall"] + ["overall"]
        printed = markdown_table({m: {d: s[d][MEAN_DICE] for d in domains} for m, s in summaries.items()}, domains)
        same = printed == expected
        print(f"\n{committed}: {'the same table' if same else 'a DIFFERENT table'}:\n{expected}")
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
