"""Cases per second against the number of ranks: the GraTa fundus bundle sharded with ``torchrun``, and the per-case
results of every rank count compared with the fewest ranks'.

``python -m monai_tta.bench.ranks --ranks 1 2 --settings episodic domain --out docs/benchmarks/ranks`` first runs the
bundle once in this process on the first target domain (it writes the embedded data, 5 domains x
``--num-per-domain`` cases, and trains the source model, neither of which is timed), then, for each setting and rank
count ``n``, launches ``torchrun --standalone --nproc_per_node n -m monai_tta.bench.ranks --worker RUN``. Each worker
builds the bundle's sharded evaluation (:data:`SHARDED_CONFIGS`), initialises it, waits for every rank, runs it and
waits again; rank 0 times that span (adaptation of its share, the gather and the summary). ``cases/s`` is the stream's
case count over that time. Each rank runs with ``--threads`` torch threads (1 by default):
``n`` ranks use ``n`` cores.

Results: ``results.json``, ``results.md`` and ``time_per_case_vs_ranks.png`` in ``--out``; the runs' own outputs (the
bundle's ``cases.csv`` per run) stay in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_tta.io import atomic_write_json, atomic_write_text
from monai_tta.reports import format_cell, markdown_table, plot_cost_ratios, read_case_csv

__all__ = ["main", "parse_args", "SHARDED_CONFIGS"]

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "grata_fundus_segmentation"
SHARDED_CONFIGS = ("inference.json", "evaluate.json", "multi_gpu_inference.json", "multi_gpu_evaluate.json")
COLUMNS = ("cases", "cases_per_rank", "seconds", "cases_per_second", "speedup", "max_abs_difference_vs_fewest_ranks")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m monai_tta.bench.ranks``."""
    p = argparse.ArgumentParser(prog="python -m monai_tta.bench.ranks", description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts to run [1 2]")
    p.add_argument("--settings", nargs="+", default=["episodic", "domain"], help="adapter settings [episodic domain]")
    p.add_argument("--num-per-domain", type=int, default=12, help="cases per target domain [12]")
    p.add_argument("--image-size", type=int, default=128, help="image side [128]")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank [1]")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks/ranks"), help="results folder")
    p.add_argument("--work", type=Path, default=Path("/tmp/monai_tta_bench_ranks"), help="data, model and run outputs")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _worker(run_dir: Path, threads: int) -> None:
    """One rank of a timed sharded run (started by ``torchrun``): the overrides and the result beside ``run_dir``."""
    import torch
    from monai.bundle import ConfigWorkflow

    from monai_tta import distributed

    torch.set_num_threads(threads)
    distributed.init_distributed()
    workflow = ConfigWorkflow(
        config_file=[str(BUNDLE / "configs" / c) for c in SHARDED_CONFIGS],
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type=None,
        **{"bundle_root": str(BUNDLE), **json.loads(run_dir.with_suffix(".overrides.json").read_text())},
    )
    workflow.initialize()
    distributed.barrier()
    start = time.perf_counter()
    workflow.run()
    distributed.barrier()
    seconds = time.perf_counter() - start
    shares = distributed.gather_objects(workflow.parser.get_parsed_content("evaluator").state.iteration)
    if distributed.is_main_process():
        atomic_write_json({"seconds": seconds, "cases_per_rank": shares}, run_dir.with_suffix(".result.json"))
    workflow.finalize()


def _launch(args: argparse.Namespace, overrides: dict[str, Any], setting: str, ranks: int) -> dict[str, Any]:
    run_dir = args.work.resolve() / "runs" / f"{setting}_{ranks}ranks"
    atomic_write_json(
        {**overrides, "setting": setting, "output_dir": str(run_dir)}, run_dir.with_suffix(".overrides.json")
    )
    run_dir.with_suffix(".result.json").unlink(missing_ok=True)
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={ranks}"]
    command += ["-m", "monai_tta.bench.ranks", "--worker", str(run_dir), "--threads", threads]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{setting} on {ranks} ranks failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    rows = read_case_csv(run_dir / "GraTa" / "cases.csv")
    timing = json.loads(run_dir.with_suffix(".result.json").read_text())
    return {"setting": setting, "ranks": ranks, "cases": len(rows), **timing, "rows": rows}


def _max_difference(rows: Sequence[dict], reference: Sequence[dict]) -> float:
    """Largest absolute difference of any numeric per-case value but ``reset`` between two runs (``inf`` if the cases
    differ)."""
    if [r["case_id"] for r in rows] != [r["case_id"] for r in reference]:
        return float("inf")
    diffs = [
        abs(float(a.get(k, "nan")) - v)
        for a, b in zip(rows, reference)
        for k, v in b.items()
        if k != "reset" and isinstance(v, float)
    ]
    return max(diffs, default=0.0)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark (or, with ``--worker``, one rank of it) and write its results."""
    args = parse_args(argv)
    if args.worker:
        _worker(args.worker, args.threads)
        return {}
    from monai_tta.zoo.run import run_bundle

    work = args.work.resolve()
    overrides = {"dataset_dir": str(work / "data"), "source_checkpoint": str(work / "models" / "model.pt")}
    overrides.update(
        {
            "num_per_domain": args.num_per_domain,
            "image_size": args.image_size,
            "num_overlays": 0,
            "handlers#0#_disabled_": True,
        }
    )
    prepare = {**overrides, "output_dir": str(work / "prepare"), "target_domains": ["camera"], "train_if_missing": True}
    run_bundle(BUNDLE, ["inference.json", "evaluate.json"], prepare, logging_file=False)  # data and source model
    runs = [_launch(args, overrides, s, n) for s in args.settings for n in args.ranks]
    table: dict[str, dict[str, Any]] = {}
    for run in runs:
        one = next(r for r in runs if r["setting"] == run["setting"] and r["ranks"] == min(args.ranks))
        run["cases_per_second"] = run["cases"] / run["seconds"]
        run["speedup"] = run["cases_per_second"] / (one["cases"] / one["seconds"])
        run["max_abs_difference_vs_fewest_ranks"] = _max_difference(run["rows"], one["rows"])
        run["cases_per_rank"] = "/".join(str(c) for c in run["cases_per_rank"])
        table[f"{run['setting']}, {run['ranks']} rank{'s' * (run['ranks'] > 1)}"] = {k: run[k] for k in COLUMNS}
    meta = {
        "command": "python -m monai_tta.bench.ranks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end",
        "threads_per_rank": args.threads,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json({"meta": meta, "runs": table}, args.out / "results.json")
    text = markdown_table(table, COLUMNS, row_title="setting, ranks", formatter=lambda v: format_cell(v, 3))
    atomic_write_text(
        f"# Cases per second against ranks\n\n`{meta['command']}`; {meta['machine']}.\n\n{text}\n",
        args.out / "results.md",
    )
    costs = {name: {"seconds_per_case": v["seconds"] / v["cases"]} for name, v in table.items()}
    panels = (("seconds_per_case", "wall time per case", "s"),)
    plot_cost_ratios(costs, next(iter(costs)), args.out / "time_per_case_vs_ranks.png", panels=panels)
    print(text)
    return table


if __name__ == "__main__":
    main()
