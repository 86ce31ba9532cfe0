"""The main job: GraTa, TENT and source-only on the embedded multi-domain data, per-domain Dice side by side.

Run from the repository root::

    python -m monai_tta.demo

It runs each method's bundle (``bundles/grata_fundus_segmentation``, ``tent_...``, ``source_only_...``; they share
the GraTa bundle's network, data and pre/post-processing) with the same data and source model. On first use the
bundle generates the embedded synthetic fundus domains
and trains the source model (``models/model.pt``); later runs reuse both. It prints a Markdown table of mean Dice
(disc and cup averaged, %) per target domain and writes it, with the command and a plot, to ``docs/results/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from monai_tta.bundle_utils import run_bundle
from monai_tta.reports import MEAN_DICE, markdown_table, plot_domain_dice

__all__ = ["METHODS", "run_demo", "main"]

#: method name -> its bundle folder (relative to the bundles folder).
METHODS = {
    "SourceOnly": "source_only_fundus_segmentation",
    "TENT": "tent_fundus_segmentation",
    "GraTa": "grata_fundus_segmentation",
}


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
    grata = bundles / METHODS["GraTa"]
    shared = {  # one data set, one source model and one results folder for every method (the GraTa bundle's)
        "dataset_dir": str(grata / "data" / "synthetic_fundus"),
        "source_checkpoint": str(grata / "models" / "model.pt"),
        "output_dir": str(grata / "eval"),
        **dict(overrides or {}),
    }
    summaries, seconds = {}, {}
    for method in methods:
        start = time.perf_counter()
        configs = ["inference.json", "evaluate.json"]
        workflow = run_bundle(bundles / METHODS[method], configs, shared, logging_file=False)
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
        (out / "main_job.md").write_text(
            "# Main job: source-only vs TENT vs GraTa on the embedded synthetic fundus domains\n\n"
            f"Command (from the repository root): `{command}`\n\n"
            "Mean Dice (%, optic disc and cup averaged) per target domain, one run; 'overall' is the mean over "
            "domains (GraTa's averaging). Each domain is adapted separately (reset at each domain change).\n\n"
            f"{text}\n\nWall time of each run on this machine (includes data generation and source training on "
            f"first use): {timing}.\n\n![Dice per domain](main_job.png)\n"
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
    overrides = {}
    if args.num_per_domain is not None:
        overrides["num_per_domain"] = args.num_per_domain
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    if args.source_epochs is not None:
        overrides["source_training#epochs"] = args.source_epochs
    command = "python -m monai_tta.demo" + ("" if argv is None else " " + " ".join(argv))
    if argv is None:
        command = "python -m monai_tta.demo " + " ".join(sys.argv[1:])
    run_demo(args.bundles_dir, args.methods, overrides, args.results_dir or None, command.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
