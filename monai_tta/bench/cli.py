"""Benchmark runner: every adaptation method on every target domain in every setting, with its cost.

Run ``python -m monai_tta.bench --help``. With no option it uses the embedded synthetic fundus data (generated into a
cache folder), trains the small source UNet on the source domain on first use (bundle ``grata_fundus_segmentation``'s
``source_training.json``; the checkpoint goes to the cache folder, never into ``bundles/*/models``), and writes to
``docs/benchmarks/``:

- ``results.md``: the exact command and machine; the cost of each method per case (wall time and peak memory, in
  milliseconds / MiB and as a ratio to source-only inference measured in the same run); the targets of the speed work
  with what was measured; Dice (mean and 95% bootstrap interval, per domain and overall) and average surface distance
  per setting; Dice per round of the 3-round stream;
- ``results.json`` (the same numbers and the configuration), ``cases.csv`` (one row per case, method and setting:
  Dice, ASD, wall time, the adapter's statistics) and ``timing.csv`` (every timed call of the timing phase);
- plots: ``dice_<setting>.png`` (Dice per domain per method), ``stream_dice.png`` (Dice along the 3-round stream),
  ``time_per_case.png`` (time and peak memory per case, as ratios to source-only).

With ``--dims 3`` (the default runs ``2 3``) it also benchmarks 3D volumes and writes the same files into
``<out>/3d/``: the embedded multi-site MR volumes (``monai_tta.data.generate_mr_sites``, into the cache folder), read,
preprocessed and predicted with the 3D bundle's configs (``bundles/grata_prostate_mr_segmentation``: its
preprocessing, 3D network and sliding-window options; source weights trained by its source-training config on the source
site on first use, into the cache folder). Every method is wrapped in ``monai_tta.inferers.SlidingWindowAdapter``
with the bundle's window, so one call adapts on the volume's patches and predicts the whole volume; the reference of
every ratio, ``source_only``, is the source model through the same sliding window. Dice per site and method (setting
``domain`` by default), and time and peak memory per volume (timing phase on one test volume, ``--vol-timing-reps``
rounds after one warm-up call; memory probes as below); the targets of issue 9 (CPU): exact GraTa <= 12x and TENT
<= 2.5x source-only per volume, extra peak memory <= 3x.

Settings: ``episodic`` (reset before every case), ``domain`` (reset at each domain change), ``continual`` (never
reset), each over one pass of the target domains, and ``stream``: a continual run over ``--rounds`` passes (3).

How time is measured: ``time.perf_counter`` around the adapter call alone (after the case is on the device; on CUDA
with ``torch.cuda.synchronize`` before and after). Two figures per method: the median over every case of the
setting runs, and the median of a separate *timing phase* where all methods are called in turn on the same image
(``--timing-reps`` rounds, the order rotated every round, after warm-up calls), so that a load change on a shared
machine hits every method alike. The ratios to source-only quoted as targets are those of the timing phase.

How peak memory is measured (per method, on the timing image, after a warm-up call, median of 3 probes of one call
each): on CUDA, ``torch.cuda.max_memory_allocated`` (tensors allocated by torch: weights, activations, workspace; the
CUDA context is not counted); on a Linux CPU, the resident set size of a separate Python process started for the
probes, whose high-water mark is reset before the call (``/proc/self/clear_refs``, after returning freed heap memory
with ``malloc_trim``) and read after (``VmHWM``). That process fixes glibc's mmap threshold at 128 KiB from its start,
so that freed tensors go back to the system and the resident set follows the live tensors (with glibc's default
dynamic threshold freed blocks stay in the heap and a peak depends on what ran before; the timed process keeps the
default, which is faster). Two figures: *extra*, the peak minus the memory in use just before the call (what one case
of the method needs on top of the loaded model and data: activations, saved tensors, gradients, views; on CUDA the
larger of that and the first call's, since a CUDA graph's memory pool is allocated then and kept), and *total*,
the peak itself (process RSS on CPU: interpreter and libraries included). Python's ``tracemalloc`` does not see
torch's allocations and is not used.

Options (defaults in brackets):

- data: ``--data synthetic`` or the path of a MONAI datalist JSON with one section per domain (and
  ``source_train`` to train a source model) [synthetic]; ``--domains`` target domains [all but the source];
  ``--num-per-domain`` cases per target domain [16]; ``--num-source`` source cases for training (synthetic) [32];
  ``--image-size`` side of the images of the Dice runs [128]; ``--cache`` folder of generated data and trained
  checkpoints [``<out>/cache``];
- model: ``--network small|resunet34`` [small]; ``--checkpoint`` source weights (trained on first use when missing)
  [``<cache>/source_<network>_...pt``]; ``--source-epochs`` [30]; ``--bundle`` bundle that trains it
  [bundles/grata_fundus_segmentation];
- methods and settings: ``--methods`` [source_only norm_adapt tent grata grata_approx vptta]
  (also ``grata_batched``, ``grata_eager``, ``grata_separate``, ``grata_joint``: the exact GraTa with the 6 views in
  one forward, without CUDA graphs, with one forward per view and no graph (the reference's structure), with the
  views and the strong view in one forward; same result); reliability variants ``<method>_<variant>`` of
  ``source_only``, ``norm_adapt``, ``tent``, ``grata``, ``sar`` (and ``vptta``): ``_nosafeguard``, ``_safeguard``,
  ``_probe`` (the safeguard's source-gap probe alone), ``_safe``, ``_safe_domain``, ``_source_stats``, ``_mix_stats``
  (fixed regimes), and ``norm_mix``, ``safe_norm``, ``safe_norm_domain``, ``sar``; ``--settings`` [episodic domain
  continual stream];
  ``--rounds`` [3];
- timing: ``--timing-size`` side of the timing image [256; 0 = ``--image-size``]; ``--timing-reps`` [7];
  ``--timing-methods`` [``--methods`` plus source-only and the exact GraTa variants: ``grata_batched``, and on a GPU
  ``grata_eager``, ``grata_separate`` and ``grata_joint``];
- device and speed: ``--device auto|cpu|cuda|cuda:N`` [auto]; ``--amp none|bf16|fp16`` (``torch.autocast`` around
  every method's call; not exact) [none]; ``--channels-last`` (network and inputs in channels-last memory format, all
  methods); ``--compile`` (``torch.compile`` of each method's network copy; for GPUs); ``--cudnn-benchmark``
  (``torch.backends.cudnn.benchmark``: cuDNN autotunes each convolution shape during the warm-up calls); ``--threads``
  torch CPU threads [torch's default]. On CUDA, float32 convolutions run as PyTorch's defaults say (cuDNN may use TF32
  on Ampere and later GPUs); ``results.md`` records those flags;
- 3D volumes: ``--dims`` [2 3]; ``--vol-sites`` target MR sites [all but the source]; ``--vol-cases`` test volumes
  per site [6]; ``--vol-num-source`` generated cases per site, the source's training split trains the source model
  [16]; ``--vol-epochs`` [the bundle's]; ``--vol-checkpoint`` [``<cache>/source_mr_...pt``];
  ``--vol-bundle`` [bundles/grata_prostate_mr_segmentation]; ``--vol-methods`` [source_only norm_adapt tent grata];
  ``--vol-settings`` [domain]; ``--vol-patches`` patches each update is computed on (``num_patches`` of the
  sliding-window adapter) [the bundle's inferer, else the adapter's default]; ``--vol-window KEY=VALUE ...``
  other options of the sliding-window adapter (e.g. ``stats_from=tiles update_batch_size=1``; values read as JSON,
  else as text) [the bundle's, else the adapter's defaults]; ``--vol-timing-reps`` [7];
  ``--vol-out`` [``<out>/3d``];
  ``--device``, ``--amp``, ``--compile``, ``--seed``, ``--rounds``, ``--timing-only``, ``--no-memory`` and
  ``--no-plots`` apply to both;
- output: ``--out`` [docs/benchmarks]; ``--timing-only`` (no Dice runs: the timing and memory phases alone, e.g. to
  compare speed options); ``--no-asd``; ``--no-plots``; ``--no-memory`` (skip the memory probes);
  ``--seed`` [0].

Example (the committed results; see ``docs/benchmarks/README.md``)::

    python -m monai_tta.bench
    python -m monai_tta.bench --device cuda --network resunet34 --image-size 512 --timing-size 512 \\
        --checkpoint /path/to/resunet34_source.pt --data /path/to/fundus_datalist.json

The package's modules, one per role: :mod:`~monai_tta.bench.cli` (this command line), :mod:`~monai_tta.bench.methods`
(the method registry), :mod:`~monai_tta.bench.data` (data, network, device), :mod:`~monai_tta.bench.probes` (time and
memory), :mod:`~monai_tta.bench.stats` (summaries, intervals, targets), :mod:`~monai_tta.bench.runner`
(orchestration), :mod:`~monai_tta.bench.outputs` (result files); tables and plots come from :mod:`monai_tta.reports`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from monai_tta.bench.data import DEFAULT_BUNDLE, NETWORKS, VOLUME_BUNDLE, window_overrides
from monai_tta.bench.methods import DEFAULT_METHODS, METHODS, SETTINGS, available_methods
from monai_tta.bench.probes import AMP
from monai_tta.bench.runner import run_benchmark
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
    p.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="bundle that trains the source model")
    p.add_argument("--methods", nargs="+", default=None, help=f"methods (default {' '.join(DEFAULT_METHODS)})")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), help="episodic domain continual stream")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the continual stream")
    p.add_argument("--timing-size", type=int, default=256, help="image side of the timing phase (0: --image-size)")
    p.add_argument("--timing-reps", type=int, default=7, help="timed calls per method in the timing phase")
    p.add_argument("--timing-methods", nargs="+", default=None, help="methods of the timing phase")
    v = p.add_argument_group("3D volumes (--dims 3), written to <out>/3d")
    v.add_argument("--vol-sites", nargs="+", default=None, help="target MR sites (default: all but the source)")
    v.add_argument("--vol-cases", type=int, default=6, help="test volumes per target site")
    v.add_argument("--vol-num-source", type=int, default=16, help="generated cases per site (source: training)")
    v.add_argument("--vol-epochs", type=int, default=None, help="source training epochs (default: the bundle's)")
    v.add_argument("--vol-checkpoint", default=None, help="source weights of the 3D network (trained when omitted)")
    v.add_argument("--vol-bundle", default=str(VOLUME_BUNDLE), help="the 3D bundle (configs of data and network)")
    v.add_argument("--vol-methods", nargs="+", default=list(VOLUME_METHODS), help="methods of the 3D runs")
    v.add_argument("--vol-settings", nargs="+", default=["domain"], help="settings of the 3D runs")
    v.add_argument("--vol-patches", type=int, default=None, help="patches of each update (default: the bundle's)")
    v.add_argument(
        "--vol-window",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="options of the sliding-window adapter over the bundle's (e.g. stats_from=tiles update_batch_size=1)",
    )
    v.add_argument("--vol-out", default=None, help="output folder of the 3D results (default <out>/3d)")
    v.add_argument("--vol-timing-reps", type=int, default=7, help="timed calls per method on one volume")
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
    p.add_argument("--timing-only", action="store_true", help="skip the Dice runs: timing and memory phases only")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default="docs/benchmarks", help="output folder")
    p.add_argument("--no-asd", action="store_true", help="skip the average surface distance")
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    p.add_argument("--seed", type=int, default=0, help="seed of data generation, training and adapters")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.methods = list(args.methods or DEFAULT_METHODS)
    for dims, names in ((2, args.methods + list(args.timing_methods or [])), (3, list(args.vol_methods))):
        for name in names:
            if name not in METHODS:
                p.error(f"unknown method {name!r}; available: {list(METHODS)}")
            if name not in available_methods(dims):
                p.error(f"method {name!r} has no {dims}D bundle to read (bundles/{METHODS[name].bundle}_...)")
    for s in args.settings + args.vol_settings:
        if s not in SETTINGS:
            p.error(f"unknown setting {s!r}; available: {list(SETTINGS)}")
    if args.num_per_domain < 1 or args.num_source < 2 or args.rounds < 1 or args.timing_reps < 1:
        p.error("--num-per-domain, --rounds and --timing-reps must be >= 1, --num-source >= 2")
    if args.vol_cases < 1 or args.vol_num_source < 2 or args.vol_timing_reps < 1 or (args.vol_patches or 1) < 1:
        p.error("--vol-cases, --vol-patches and --vol-timing-reps must be >= 1, --vol-num-source >= 2")
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
