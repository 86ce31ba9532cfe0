"""Benchmark runner: every adaptation method on every target domain in every setting, with its cost.

Every Dice run is a bundle's own evaluation: the method's bundle (``bundles/<method>_fundus_segmentation`` in 2D,
``bundles/<method>_prostate_mr_segmentation`` in 3D) read with MONAI's ``ConfigParser`` (``inference.json`` +
``evaluate.json``), the setting and the method's variant as overrides; its ``AdaptiveEvaluator`` runs the stream with
its ``CaseReport`` (the bundles' per-case row) and a ``CaseCost`` handler. Data are the embedded ones (generated into
``--cache``), preprocessed once by the bundle; the source model is trained on first use by the bundle's
source-training config (into the cache); predictions are scored in each input's own grid. 2D results go to ``--out``,
3D results to ``<out>/3d`` (``--vol-out``): ``results.md``, ``results.json``, ``cases.csv`` (one row per case, method
and setting, with the cost of its adapter call) and plots.

Settings: ``episodic`` (reset before every case), ``domain`` (reset at each domain change), ``continual`` (never
reset), and ``stream``: a continual run over ``--rounds`` passes of the target domains.

Cost per case: the ``CaseCost`` handler (``monai_tta.handlers``) measures the adapter's call of every case in the
evaluator, from its ADAPT_STARTED event (the case on the device) to FORWARD_COMPLETED: wall time
(``time.perf_counter``, on CUDA synchronised before and after) and process CPU time (all threads). The cost table of a
method is its run in the ``episodic`` setting (else the first setting run: in ``episodic`` every case adapts from the
source model, and no safeguard fallback stands in for the method), over that run's cases after its first 2 (2D) or 1
(3D) cases, which are warm-up (one-off work: the optimizer, the norm conversion, CUDA graphs, lazy buffers; with
no case after them, the last case alone): the median time of the cases without a memory probe. Methods are timed one
after the other, not interleaved. Ratios are to source-only in the same benchmark run.

Peak memory (unless ``--no-memory``; in the cost setting's runs only), around the call of every other case (cases 0,
2, 4, ...: a probe slows the call it measures, so those cases are not timed), set up before and read after the timed
span: on CUDA ``torch.cuda.max_memory_allocated`` (the warm-up cases counted too when larger: CUDA graphs allocate
their pool in the first call); on a Linux CPU the process's resident set (glibc's mmap threshold fixed at 128 KiB when
the benchmark starts, so freed tensors are returned to the system; free heap memory returned and the high-water mark
reset through ``/proc/self/clear_refs`` before the call, ``VmHWM`` read after). *extra*: the peak minus the memory in
use before the call; *total*: the peak itself; the median over the probed cases after the warm-up.

Methods: ``--methods`` names from ``monai_tta.bench.METHODS`` (the bundles' methods and their variants
``<method>_<variant>``: ``_nosafeguard``, ``_safeguard``, ``_probe``, ``_gap0``, ``_safe``, ``_safe_domain``,
``_source_stats``, ``_mix_stats``; GraTa's view modes ``grata_batched``, ``grata_eager``, ``grata_separate``,
``grata_joint``; ``norm_mix``, ``safe_norm``, ``safe_norm_domain``, ``sar``). ``--soak N`` runs only the soak.

Example (the committed results; see ``docs/benchmarks/README.md``)::

    python -m monai_tta.bench
    python -m monai_tta.bench --device cuda --network resunet34 --image-size 512 \\
        --checkpoint /path/to/resunet34_source.pt --data /path/to/fundus_datalist.json
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from monai_tta.bench.data import NETWORKS, window_overrides
from monai_tta.bench.methods import DEFAULT_METHODS, METHODS, SETTINGS, available_methods
from monai_tta.bench.runner import AMP, run_benchmark
from monai_tta.bench.soak import SOAK_METHODS, run_soak
from monai_tta.reports import format_number

__all__ = ["VOLUME_METHODS", "parse_args", "main"]

#: the methods of the 3D runs when ``--vol-methods`` is not given.
VOLUME_METHODS = ("source_only", "norm_adapt", "tent", "grata")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see the module docstring)."""
    p = argparse.ArgumentParser(
        prog="python -m monai_tta.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dims", nargs="+", type=int, default=[2, 3], choices=(2, 3), help="2: images, 3: volumes")
    p.add_argument("--data", default="synthetic", help="'synthetic' or a MONAI datalist JSON (one section per domain)")
    p.add_argument("--domains", nargs="+", default=None, help="target domains (default: all but the source)")
    p.add_argument("--num-per-domain", type=int, default=16, help="cases per target domain")
    p.add_argument("--num-source", type=int, default=32, help="synthetic source cases (source model training)")
    p.add_argument("--image-size", type=int, default=128, help="image side of the Dice runs")
    p.add_argument("--cache", default=None, help="generated data and trained checkpoints (default <out>/cache)")
    p.add_argument("--network", default="small", choices=NETWORKS, help="SmallUNet or ResUNet-34")
    p.add_argument("--checkpoint", default=None, help="source weights (trained on first use when missing)")
    p.add_argument("--source-epochs", type=int, default=30, help="epochs of the source training (first use)")
    p.add_argument("--methods", nargs="+", default=None, help=f"methods (default {' '.join(DEFAULT_METHODS)})")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), help="episodic domain continual stream")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the continual stream")
    v = p.add_argument_group("3D volumes (--dims 3), written to <out>/3d")
    v.add_argument("--vol-sites", nargs="+", default=None, help="target MR sites (default: all but the source)")
    v.add_argument(
        "--vol-data",
        default=None,
        help="a MONAI datalist JSON of volumes (sections '<site>_test', the MR bundles' layout) instead of the "
        "embedded sites; needs --vol-checkpoint unless it has source_train",
    )
    v.add_argument("--vol-cases", type=int, default=6, help="test volumes per target site")
    v.add_argument("--vol-num-source", type=int, default=16, help="generated cases per site (source: training)")
    v.add_argument("--vol-epochs", type=int, default=None, help="source training epochs (default: the bundle's)")
    v.add_argument("--vol-checkpoint", default=None, help="source weights of the 3D network (trained when omitted)")
    v.add_argument("--vol-methods", nargs="+", default=list(VOLUME_METHODS), help="methods of the 3D runs")
    v.add_argument("--vol-settings", nargs="+", default=["episodic", "domain"], help="settings of the 3D runs")
    v.add_argument("--vol-patches", type=int, default=None, help="patches of each update (default: the bundle's)")
    v.add_argument(
        "--vol-window",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="options of the sliding-window adapter over the bundle's (e.g. stats_from=tiles update_batch_size=1)",
    )
    v.add_argument("--vol-out", default=None, help="output folder of the 3D results (default <out>/3d)")
    k = p.add_argument_group("soak run (--soak N: only the soak, written to <out>/soak.md and soak.json)")
    k.add_argument("--soak", type=int, default=0, help="images of the soak run (0: no soak run)")
    k.add_argument("--soak-size", type=int, default=32, help="side of the soak images")
    k.add_argument("--soak-block", type=int, default=250, help="cases per block of the soak figures")
    k.add_argument("--soak-methods", nargs="+", default=list(SOAK_METHODS), help="methods of the soak run")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", default="none", choices=list(AMP), help="torch.autocast around every call (not exact)")
    p.add_argument("--channels-last", action="store_true", help="channels-last network and inputs (all methods)")
    p.add_argument("--compile", action="store_true", help="torch.compile each method's network copy (GPU)")
    p.add_argument(
        "--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True (autotuned convolutions)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default="docs/benchmarks", help="output folder")
    p.add_argument("--no-asd", action="store_true", help="skip the average surface distance")
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probe of each call")
    p.add_argument("--seed", type=int, default=0, help="seed of data generation, training and adapters")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.methods = list(args.methods or DEFAULT_METHODS)
    for dims, names in ((2, args.methods), (3, list(args.vol_methods))):
        for name in names:
            if name not in METHODS:
                p.error(f"unknown method {name!r}; available: {list(METHODS)}")
            if name not in available_methods(dims):
                p.error(f"method {name!r} has no {dims}D bundle to read (bundles/{METHODS[name].bundle}_...)")
    for s in args.settings + args.vol_settings:
        if s not in SETTINGS:
            p.error(f"unknown setting {s!r}; available: {list(SETTINGS)}")
    if args.num_per_domain < 1 or args.num_source < 2 or args.rounds < 1:
        p.error("--num-per-domain and --rounds must be >= 1, --num-source >= 2")
    if args.vol_cases < 1 or args.vol_num_source < 2 or (args.vol_patches or 1) < 1:
        p.error("--vol-cases and --vol-patches must be >= 1, --vol-num-source >= 2")
    try:
        args.vol_window = window_overrides(args.vol_window)
    except ValueError as e:
        p.error(str(e))
    args.dims = sorted(set(args.dims))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m monai_tta.bench [options]``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    if args.soak:
        run_soak(args)
        return 0
    for dims, result in run_benchmark(args).items():
        for t in result["targets"]:
            met = "n/a" if t["met"] is None else ("met" if t["met"] else "MISSED")
            print(f"{dims} {t['target']}: {format_number(t['measured'], 2)} ({met})")
    return 0
