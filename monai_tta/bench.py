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
  views and the strong view in one forward; same result); ``--settings`` [episodic domain continual stream];
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
- output: ``--out`` [docs/benchmarks]; ``--timing-only`` (no Dice runs: the timing and memory phases alone, e.g. to
  compare speed options); ``--no-asd``; ``--no-plots``; ``--no-memory`` (skip the memory probes);
  ``--seed`` [0].

Example (the committed results; see ``docs/benchmarks/README.md``)::

    python -m monai_tta.bench
    python -m monai_tta.bench --device cuda --network resunet34 --image-size 512 --timing-size 512 \\
        --checkpoint /path/to/resunet34_source.pt --data /path/to/fundus_datalist.json
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from monai_tta.adapters import GraTa, NormAdapt, SourceOnly, Tent
from monai_tta.adapters.base import Adapter
from monai_tta.keys import DataKeys, Setting
from monai_tta.metrics import asd_per_channel, dice_per_channel
from monai_tta.reports import bootstrap_ci, markdown_table, plot_domain_dice, write_case_csv

__all__ = [
    "METHODS",
    "SETTINGS",
    "STREAM",
    "MethodSpec",
    "PeakMemory",
    "available_methods",
    "make_adapter",
    "parse_args",
    "prepare_data",
    "prepare_network",
    "run_cases",
    "time_methods",
    "measure_memory",
    "summarize_runs",
    "check_targets",
    "write_outputs",
    "run_benchmark",
    "main",
]

logger = logging.getLogger("monai_tta.bench")

#: the 3-round continual stream (a setting name of the benchmark, not of the adapters).
STREAM = "stream"
#: settings of the benchmark: the adapters' three, and the multi-round continual stream.
SETTINGS = (Setting.EPISODIC.value, Setting.DOMAIN.value, Setting.CONTINUAL.value, STREAM)
_AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_NETWORKS = ("small", "resunet34")
_BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "grata_fundus_segmentation"
_DEFAULT_METHODS = ("source_only", "norm_adapt", "tent", "grata", "grata_approx", "vptta")
_REFERENCE = "source_only"


@dataclass(frozen=True)
class MethodSpec:
    """A method of the benchmark.

    Attributes:
        factory: ``factory(setting, image_size, seed) -> Adapter``.
        description: one line for the report.
    """

    factory: Callable[[str, int, int], Adapter]
    description: str


def _vptta(setting: str, image_size: int, seed: int) -> Adapter:
    from monai_tta.adapters.vptta import VPTTA  # optional: the benchmark runs without it

    return VPTTA(image_size=image_size, setting=setting, seed=seed)


METHODS: dict[str, MethodSpec] = {
    "source_only": MethodSpec(
        lambda s, i, r: SourceOnly(setting=s, seed=r), "source model, source BatchNorm statistics (no adaptation)"
    ),
    "norm_adapt": MethodSpec(
        lambda s, i, r: NormAdapt(setting=s, seed=r), "per-image BatchNorm statistics, no gradient step"
    ),
    "tent": MethodSpec(lambda s, i, r: Tent(setting=s, seed=r), "TENT: entropy, BN affine, Adam 1e-4, 1 fwd + 1 bwd"),
    "grata": MethodSpec(
        lambda s, i, r: GraTa(setting=s, seed=r),
        "GraTa exact (the published update; defaults: on a GPU the 6 views in 3 forwards of 2 with per-sample "
        "statistics and the update and the prediction replayed as CUDA graphs, on a CPU one forward per view), "
        "9 fwd + 2 bwd",
    ),
    "grata_eager": MethodSpec(
        lambda s, i, r: GraTa(setting=s, seed=r, cuda_graph=False),
        "GraTa exact, the default view mode without CUDA graphs (same result as grata)",
    ),
    "grata_batched": MethodSpec(
        lambda s, i, r: GraTa(setting=s, seed=r, view_mode="batched", view_chunk=None),
        "GraTa exact, the 6 views in one forward with per-sample statistics (same result as grata)",
    ),
    "grata_separate": MethodSpec(
        lambda s, i, r: GraTa(setting=s, seed=r, view_mode="separate", cuda_graph=False),
        "GraTa exact, one forward per view, no CUDA graph (the reference's structure; same result as grata)",
    ),
    "grata_joint": MethodSpec(
        lambda s, i, r: GraTa(setting=s, seed=r, view_mode="joint"),
        "GraTa exact, the 6 views and the strong view in one forward (same result as grata)",
    ),
    "grata_approx": MethodSpec(
        lambda s, i, r: GraTa(setting=s, seed=r, mode="approximate"),
        "GraTa approximate (NOT the published algorithm): pseudo-label and reported prediction from the entropy "
        "pass, strong pass at half size; about 1.25 fwd + 1.25 bwd",
    ),
    "vptta": MethodSpec(_vptta, "VPTTA: Fourier prompt + memory bank, warm-up BN statistics, frozen network"),
}
"""Registry of the benchmark's methods, name -> :class:`MethodSpec`."""


def available_methods() -> list[str]:
    """Names of :data:`METHODS` whose adapter can be built here (VPTTA is optional)."""
    names = []
    for name, spec in METHODS.items():
        try:
            spec.factory(Setting.CONTINUAL.value, 128, 0)
        except ImportError:
            continue
        names.append(name)
    return names


def make_adapter(name: str, setting: str, image_size: int, seed: int = 0) -> Adapter:
    """Build the adapter of method ``name`` for a benchmark ``setting`` (``stream`` is a continual run).

    Raises:
        ValueError: for an unknown method or setting.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {list(METHODS)}.")
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; available: {list(SETTINGS)}.")
    return METHODS[name].factory(Setting.CONTINUAL.value if setting == STREAM else setting, image_size, seed)


# --------------------------------------------------------------------------------------------- memory and timing
def _proc_status_kb(field_name: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return float(line.split()[1])
    raise OSError(f"{field_name} not in /proc/self/status")


def _reset_rss_peak() -> bool:
    """Free cached heap memory and reset the RSS high-water mark to the current RSS (Linux); False if impossible."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _proc_status_kb("VmHWM")
    except OSError:
        return False
    return True


def _fix_mmap_threshold(threshold: int = 128 * 1024) -> bool:
    """Fix glibc's mmap threshold (``mallopt(M_MMAP_THRESHOLD)``): larger blocks are mapped, and unmapped when freed."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, int(threshold)))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of a block of code, in MiB: CUDA tensors on a GPU, the process's resident set on a Linux CPU.

    Attributes after the block: ``kind`` (``"cuda_allocated"``, ``"process_rss"`` or ``"unavailable"``), ``base``
    (in use just before), ``peak``, ``extra = peak - base``.

    Args:
        device: the device the block runs on.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.kind = "unavailable"
        self.base = self.peak = math.nan

    @property
    def extra(self) -> float:
        return self.peak - self.base

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind, self.base = "cuda_allocated", torch.cuda.memory_allocated(self.device) / 2**20
        elif self.device.type == "cpu" and _reset_rss_peak():
            self.kind, self.base = "process_rss", _proc_status_kb("VmRSS") / 1024
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.kind == "cuda_allocated":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.kind == "process_rss":
            self.peak = _proc_status_kb("VmHWM") / 1024


@contextmanager
def _call_context(device: torch.device, amp: torch.dtype | None) -> Iterator[None]:
    """How an evaluator calls an inferer: under ``no_grad`` (the adapter enables gradients itself), optional AMP."""
    amp_ctx = torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()
    with torch.no_grad(), amp_ctx:
        yield


def _timed_call(
    adapter: Adapter, x: torch.Tensor, net: nn.Module, device: torch.device, amp: torch.dtype | None
) -> tuple[torch.Tensor, float]:
    _sync(device)
    start = time.perf_counter()
    with _call_context(device, amp):
        logits = adapter(x, net)
    _sync(device)
    return logits, (time.perf_counter() - start) * 1000.0


# --------------------------------------------------------------------------------------------- arguments
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see the module docstring)."""
    p = argparse.ArgumentParser(
        prog="python -m monai_tta.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", default="synthetic", help="'synthetic' or a MONAI datalist JSON (one section per domain)")
    p.add_argument("--domains", nargs="+", default=None, help="target domains (default: all but the source)")
    p.add_argument("--num-per-domain", type=int, default=16, help="cases per target domain")
    p.add_argument("--num-source", type=int, default=32, help="synthetic source cases (source model training)")
    p.add_argument("--image-size", type=int, default=128, help="image side of the Dice runs")
    p.add_argument("--cache", default=None, help="generated data and trained checkpoints (default <out>/cache)")
    p.add_argument("--network", default="small", choices=_NETWORKS, help="SmallUNet or ResUNet-34")
    p.add_argument("--checkpoint", default=None, help="source weights (trained on first use when missing)")
    p.add_argument("--source-epochs", type=int, default=30, help="epochs of the source training (first use)")
    p.add_argument("--bundle", default=str(_BUNDLE), help="bundle whose source_training.json trains the source model")
    p.add_argument("--methods", nargs="+", default=None, help=f"methods (default {' '.join(_DEFAULT_METHODS)})")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), help="episodic domain continual stream")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the continual stream")
    p.add_argument("--timing-size", type=int, default=256, help="image side of the timing phase (0: --image-size)")
    p.add_argument("--timing-reps", type=int, default=7, help="timed calls per method in the timing phase")
    p.add_argument("--timing-methods", nargs="+", default=None, help="methods of the timing phase")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", default="none", choices=list(_AMP), help="torch.autocast around every call (not exact)")
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
    known = available_methods()
    args.methods = list(args.methods or [m for m in _DEFAULT_METHODS if m in known])
    for name in args.methods + list(args.timing_methods or []):
        if name not in METHODS:
            p.error(f"unknown method {name!r}; available: {list(METHODS)}")
        if name not in known:
            p.error(f"method {name!r} cannot be built here (optional module missing)")
    for s in args.settings:
        if s not in SETTINGS:
            p.error(f"unknown setting {s!r}; available: {list(SETTINGS)}")
    if args.num_per_domain < 1 or args.num_source < 2 or args.rounds < 1 or args.timing_reps < 1:
        p.error("--num-per-domain, --rounds and --timing-reps must be >= 1, --num-source >= 2")
    return args


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available here.")
    return device


# --------------------------------------------------------------------------------------------- data and network
def _bundle_parser(bundle: Path, image_size: int, network: str) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    files = [bundle / "configs" / "inference.json"]
    if network == "resunet34" and (bundle / "configs" / "resunet34.json").is_file():
        files.append(bundle / "configs" / "resunet34.json")
    parser.read_config([str(f) for f in files])
    parser.update({"bundle_root": str(bundle), "image_size": int(image_size)})
    if network == "resunet34":
        parser["network_def"] = {"_target_": "monai_tta.networks.ResUNet", "in_channels": 3, "out_channels": 2}
    return parser


def prepare_data(args: argparse.Namespace) -> dict[str, Any]:
    """Generate (or read) the data, preprocess every target case once and keep it in memory.

    Returns:
        ``{"datalist": path, "source_datalist": path or None, "domains": [...], "cases": {domain: [case, ...]},
        "preprocessing": Compose, "channel_names": [...]}``; a case holds ``image`` ``(1, C, H, W)`` and ``label``
        ``(C', H, W)`` tensors, ``domain`` and ``case_id``.
    """
    from monai_tta.data import SOURCE_DOMAIN, generate_fundus_domains, list_domains, load_datalist

    cache = Path(args.cache)
    parser = _bundle_parser(Path(args.bundle), args.image_size, args.network)
    preprocessing = parser.get_parsed_content("labelled_preprocessing")
    source_datalist = None
    if args.data == "synthetic":
        domains = list(args.domains or [d for d in list_domains() if d != SOURCE_DOMAIN])
        tag = f"{args.image_size}_s{args.seed}"
        datalist = generate_fundus_domains(
            cache / f"synthetic_fundus_{tag}_n{args.num_per_domain}",
            num_per_domain=args.num_per_domain,
            image_size=args.image_size,
            seed=args.seed,
            domains=domains,
        )
        source_datalist = generate_fundus_domains(
            cache / f"synthetic_fundus_{tag}_source{args.num_source}",
            num_per_domain=args.num_source,
            image_size=args.image_size,
            seed=args.seed,
            domains=[SOURCE_DOMAIN],
        )
        sections = load_datalist(datalist, domains)
    else:
        datalist = Path(args.data)
        content = json.loads(datalist.read_text())
        domains = list(args.domains or content.get("domains") or [])
        if not domains:
            raise ValueError(f"{datalist}: pass --domains (the file has no 'domains' list).")
        sections = load_datalist(datalist, domains)
        sections = {d: items[: args.num_per_domain] for d, items in sections.items()}
        if "source_train" in content:
            source_datalist = datalist
    cases: dict[str, list[dict[str, Any]]] = {}
    for domain in domains:
        cases[domain] = []
        for item in sections[domain]:
            data = preprocessing(dict(item))
            image = torch.as_tensor(data[DataKeys.IMAGE]).float()
            label = torch.as_tensor(data[DataKeys.LABEL]).float() if DataKeys.LABEL in data else None
            cases[domain].append(
                {
                    "image": image.unsqueeze(0).contiguous(),
                    "label": label,
                    "domain": domain,
                    "case_id": str(item.get(DataKeys.CASE_ID, len(cases[domain]))),
                }
            )
    channel_names = list(parser.get_parsed_content("channel_names"))
    return {
        "datalist": datalist,
        "source_datalist": source_datalist,
        "domains": domains,
        "cases": cases,
        "preprocessing": preprocessing,
        "channel_names": channel_names,
        "parser": parser,
    }


def prepare_network(args: argparse.Namespace, data: Mapping[str, Any], device: torch.device) -> tuple[nn.Module, Path]:
    """The source network with its weights (trained by the bundle's ``source_training.json`` when missing).

    Raises:
        FileNotFoundError: if the checkpoint is missing and no source training data is known.
    """
    from monai.utils import set_determinism

    from monai_tta.bundle_utils import ensure_source_checkpoint
    from monai_tta.networks import load_reference_state_dict

    parser = data["parser"]
    set_determinism(seed=args.seed)  # torch's default generator is seeded at random: seed the initial weights
    network = parser.get_parsed_content("network_def").to(device)
    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
    else:
        name = f"source_{args.network}_{args.image_size}_n{args.num_source}_e{args.source_epochs}_s{args.seed}.pt"
        checkpoint = Path(args.cache) / name
    if not checkpoint.is_file():
        if data["source_datalist"] is None:
            raise FileNotFoundError(f"source checkpoint {checkpoint} is missing and the datalist has no source_train.")
        logger.info(f"training the source model ({args.source_epochs} epochs) into {checkpoint}")
        start = time.perf_counter()
        overrides = {
            "epochs": int(args.source_epochs),
            "network": network,
            "labelled_preprocessing": data["preprocessing"],
            "datalist_file": str(data["source_datalist"]),
            "device": device,
            "seed": int(args.seed),
        }
        ensure_source_checkpoint(checkpoint, args.bundle, overrides)
        logger.info(f"source training took {time.perf_counter() - start:.0f} s")
    load_reference_state_dict(network, str(checkpoint))
    set_determinism(seed=None)
    return network.eval(), checkpoint


def _prepare_copy(network: nn.Module, channels_last: bool, compile_net: bool) -> nn.Module:
    net = copy.deepcopy(network)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if compile_net:
        net = torch.compile(net, dynamic=False)
    return net


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


# --------------------------------------------------------------------------------------------- runs
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
) -> list[dict[str, Any]]:
    """Run one method in one setting over the target domains (``rounds`` passes for ``"stream"``); one row per case.

    The adapter gets a fresh copy of the source network and is told each case's domain before the call, as
    :class:`~monai_tta.engines.AdaptiveEvaluator` does.
    """
    net = _prepare_copy(network, channels_last, compile_net)
    adapter = make_adapter(method, setting, image_size, seed)
    n_rounds = rounds if setting == STREAM else 1
    rows: list[dict[str, Any]] = []
    for round_index in range(n_rounds):
        for domain, items in cases.items():
            for case in items:
                x = _to_device(case["image"], device, channels_last)
                adapter.set_domain(domain)
                logits, ms = _timed_call(adapter, x, net, device, amp)
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
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        row[str(key)] = float(value)
                rows.append(row)
    return rows


def time_methods(
    methods: Sequence[str],
    network: nn.Module,
    image: torch.Tensor,
    device: torch.device,
    reps: int = 7,
    warmup: int = 2,
    seed: int = 0,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
    compile_net: bool = False,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Time every method on the same image, interleaved.

    Each method gets a fresh network copy and a continual adapter, and is called ``warmup`` times. Then ``reps``
    rounds call every method once (the order rotated every round) and time each call.

    Returns:
        per method: ``median_ms``, ``mean_ms``, ``min_ms``, ``max_ms``; and the list of timed calls.
    """
    x = _to_device(image, device, channels_last)
    size = int(image.shape[-1])
    entries = {
        m: (_prepare_copy(network, channels_last, compile_net), make_adapter(m, "continual", size, seed))
        for m in methods
    }
    for net, adapter in entries.values():
        for _ in range(warmup):
            _timed_call(adapter, x, net, device, amp)
    calls: list[dict[str, Any]] = []
    order = list(methods)
    for rep in range(reps):
        for name in order[rep % len(order) :] + order[: rep % len(order)]:
            net, adapter = entries[name]
            _, ms = _timed_call(adapter, x, net, device, amp)
            calls.append({"rep": rep, "method": name, "time_ms": ms})
    results: dict[str, dict[str, Any]] = {}
    for name in methods:
        times = [c["time_ms"] for c in calls if c["method"] == name]
        results[name] = {
            "median_ms": float(np.median(times)),
            "mean_ms": float(np.mean(times)),
            "min_ms": float(np.min(times)),
            "max_ms": float(np.max(times)),
        }
    return results, calls


def _memory_probes(
    methods: Sequence[str],
    network: nn.Module,
    image: torch.Tensor,
    device: torch.device,
    probes: int = 3,
    warmup: int = 1,
    seed: int = 0,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict[str, dict[str, Any]]:
    """In this process: per method (one after the other), warm-up calls, then ``probes`` one-call peaks (median).

    On CUDA the first warm-up call is measured too, and a method's figures are the larger of it and the median:
    CUDA graphs allocate their memory pool during the first call (the capture) and keep it for every later call.
    """
    x = _to_device(image, device, channels_last)
    results: dict[str, dict[str, Any]] = {}
    for name in methods:
        net = _prepare_copy(network, channels_last, False)
        adapter = make_adapter(name, "continual", int(image.shape[-1]), seed)
        first = None
        if device.type == "cuda" and warmup > 0:  # the first call, where CUDA graphs allocate their pool, is measured
            with PeakMemory(device) as first, _call_context(device, amp):
                adapter(x, net)
        with _call_context(device, amp):
            for _ in range(warmup - (first is not None)):
                adapter(x, net)
        values = []
        for _ in range(max(int(probes), 1)):
            with PeakMemory(device) as mem:
                with _call_context(device, amp):
                    adapter(x, net)
            values.append((mem.extra, mem.peak))
        extra, total = float(np.median([v[0] for v in values])), float(np.median([v[1] for v in values]))
        if first is not None:  # CUDA graphs allocate their pool during the first call and keep it: count it
            extra, total = max(extra, first.extra), max(total, first.peak)
        results[name] = {"memory_kind": mem.kind, "peak_extra_mb": extra, "peak_total_mb": total}
        del net, adapter
    return results


def measure_memory(
    methods: Sequence[str],
    network: nn.Module,
    image: torch.Tensor,
    device: torch.device,
    probes: int = 3,
    seed: int = 0,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict[str, dict[str, Any]]:
    """Peak memory of one call of each method on ``image`` (median of ``probes``), see :class:`PeakMemory`.

    On CUDA the probes run in this process (``torch.cuda`` statistics count torch's tensors exactly). On a Linux CPU
    they run in a fresh Python process whose glibc mmap threshold is fixed at 128 KiB from the start, so that freed
    tensors go back to the system and the resident set follows the live tensors: in a process that has already run
    other methods, glibc's default (dynamic) threshold leaves freed blocks in the heap, and a peak would depend on
    what ran before. ``torch.compile`` is not applied to the probes.

    Returns:
        per method: ``memory_kind``, ``peak_extra_mb``, ``peak_total_mb``.
    """
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return _memory_probes(methods, network, image, device, probes, seed=seed, amp=amp, channels_last=channels_last)
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.pt"
        result = Path(tmp) / "result.json"
        torch.save(
            {
                "network": network,
                "image": image.cpu(),
                "methods": list(methods),
                "probes": int(probes),
                "seed": int(seed),
                "amp": _amp_name(amp),
                "channels_last": bool(channels_last),
                "threads": torch.get_num_threads(),
                "result": str(result),
            },
            spec,
        )
        code = "import sys; from monai_tta.bench import _memory_worker; _memory_worker(sys.argv[1])"
        proc = subprocess.run([sys.executable, "-c", code, str(spec)], capture_output=True, text=True)
        if proc.returncode != 0 or not result.is_file():
            logger.warning(f"memory probe process failed ({proc.returncode}): {proc.stderr[-2000:]}")
            return {
                m: {"memory_kind": "unavailable", "peak_extra_mb": math.nan, "peak_total_mb": math.nan} for m in methods
            }
        return json.loads(result.read_text())


def _amp_name(amp: torch.dtype | None) -> str:
    """The ``--amp`` name of an autocast dtype."""
    return next(k for k, v in _AMP.items() if v == amp)


def _memory_worker(spec_file: str) -> None:
    """Entry point of the memory-probe process started by :func:`measure_memory`."""
    _fix_mmap_threshold()
    spec = torch.load(spec_file, weights_only=False)
    torch.set_num_threads(int(spec["threads"]))
    results = _memory_probes(
        spec["methods"],
        spec["network"],
        spec["image"],
        torch.device("cpu"),
        spec["probes"],
        seed=spec["seed"],
        amp=_AMP[spec["amp"]],
        channels_last=spec["channels_last"],
    )
    Path(spec["result"]).write_text(json.dumps(results))


# --------------------------------------------------------------------------------------------- summaries
def _stratified_ci(values: Mapping[str, Sequence[float]], n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean over groups of the group means (cases resampled per group)."""
    groups = [np.asarray(v, dtype=float) for v in values.values() if len(v)]
    if not groups:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.zeros(n_boot)
    for g in groups:
        means += g[rng.integers(0, g.size, size=(n_boot, g.size))].mean(axis=1)
    means /= len(groups)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def summarize_runs(rows: Sequence[Mapping[str, Any]], domains: Sequence[str]) -> dict[str, Any]:
    """Per setting, method and domain (and ``overall`` = mean over domains): Dice mean and 95% CI, ASD mean, time.

    The intervals resample images: in the stream setting an image's Dice is first averaged over the rounds. For the
    stream setting the same is given per round under ``"rounds"``.
    """
    out: dict[str, Any] = {}
    keys = sorted(dict.fromkeys((r["setting"], r["method"]) for r in rows), key=lambda k: SETTINGS.index(k[0]))
    for setting, method in keys:
        items = [r for r in rows if r["setting"] == setting and r["method"] == method]
        entry = _summary_block(items, domains)
        if setting == STREAM:
            rounds = sorted({int(r["round"]) for r in items})
            entry["rounds"] = {
                str(k): _summary_block([r for r in items if int(r["round"]) == k], domains) for k in rounds
            }
        out.setdefault(setting, {})[method] = entry
    return out


def _per_case_means(items: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    """``key`` averaged per case id (the rounds of a stream repeat the same images: they are not new samples)."""
    values: dict[str, list[float]] = {}
    for r in items:
        values.setdefault(str(r[DataKeys.CASE_ID]), []).append(float(r[key]))
    return [float(np.mean(v)) for v in values.values()]


def _summary_block(items: Sequence[Mapping[str, Any]], domains: Sequence[str]) -> dict[str, Any]:
    block: dict[str, Any] = {}
    per_domain: dict[str, list[float]] = {}
    for domain in domains:
        sel = [r for r in items if r[DataKeys.DOMAIN] == domain]
        if not sel:
            continue
        entry: dict[str, Any] = {"n": len(sel), "time_ms": float(np.median([r["time_ms"] for r in sel]))}
        if "dice_mean" in sel[0]:
            dice = _per_case_means(sel, "dice_mean")  # resample images, not repeated passes over them
            per_domain[domain] = dice
            lo, hi = bootstrap_ci(dice)
            entry.update(dice=float(np.mean([float(r["dice_mean"]) for r in sel])), dice_lo=lo, dice_hi=hi)
        if "asd_mean" in sel[0]:
            entry["asd"] = float(np.mean([float(r["asd_mean"]) for r in sel]))
        block[domain] = entry
    overall: dict[str, Any] = {"n": len(items), "time_ms": float(np.median([r["time_ms"] for r in items]))}
    if per_domain:
        lo, hi = _stratified_ci(per_domain)
        overall.update(dice=float(np.mean([block[d]["dice"] for d in per_domain])), dice_lo=lo, dice_hi=hi)
    if items and "asd_mean" in items[0]:
        overall["asd"] = float(np.mean([block[d]["asd"] for d in block]))
    block["overall"] = overall
    return block


def _ratio(value: float, reference: float) -> float:
    return value / reference if reference and math.isfinite(reference) and reference > 0 else math.nan


def check_targets(
    timing: Mapping[str, Mapping[str, Any]], summary: Mapping[str, Any], device: torch.device
) -> list[dict[str, Any]]:
    """The targets of the speed work, with what this run measured (``met`` is None when not measured)."""
    ref = timing.get(_REFERENCE, {})
    targets: list[dict[str, Any]] = []

    def add(name: str, value: float, limit: float, higher_is_better: bool = False) -> None:
        met = None if not math.isfinite(value) else (value >= limit if higher_is_better else value <= limit)
        targets.append({"target": name, "measured": value, "limit": limit, "met": met})

    if device.type == "cpu":
        if "grata" in timing:
            add(
                "exact GraTa time / source-only (CPU) <= 9.5",
                _ratio(timing["grata"]["median_ms"], ref.get("median_ms")),
                9.5,
            )
        if "grata_approx" in timing:
            add(
                "approximate GraTa time / source-only (CPU) <= 4",
                _ratio(timing["grata_approx"]["median_ms"], ref.get("median_ms")),
                4.0,
            )
    elif "grata" in timing and "grata_separate" in timing:
        add(
            "separate-forward GraTa time / exact GraTa (GPU) >= 2",
            _ratio(timing["grata_separate"]["median_ms"], timing["grata"]["median_ms"]),
            2.0,
            higher_is_better=True,
        )
    for setting, methods in summary.items():
        if "grata" in methods and "grata_approx" in methods:
            exact, approx = methods["grata"]["overall"].get("dice"), methods["grata_approx"]["overall"].get("dice")
            if exact is not None and approx is not None:
                add(f"Dice(exact GraTa) - Dice(approximate), {setting} <= 0.5", exact - approx, 0.5)
    for method in ("grata", "grata_approx"):
        if method in timing:
            for kind in ("extra", "total"):
                value = _ratio(timing[method][f"peak_{kind}_mb"], ref.get(f"peak_{kind}_mb"))
                add(f"{method} peak memory ({kind}) / source-only <= 3", value, 3.0)
    return targets


# --------------------------------------------------------------------------------------------- outputs
def _fmt(v: Any, digits: int = 1) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and math.isfinite(v) else "-"


def _dice_table(methods: Mapping[str, Any], columns: Sequence[str]) -> str:
    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for method, block in methods.items():
        cells = []
        for col in columns:
            e = block.get(col, {})
            cells.append(
                f"{_fmt(e.get('dice'))} [{_fmt(e.get('dice_lo'))}, {_fmt(e.get('dice_hi'))}]" if "dice" in e else "-"
            )
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _environment(device: torch.device) -> dict[str, Any]:
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


def write_outputs(
    out: Path,
    rows: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    timing: Mapping[str, Mapping[str, Any]],
    calls: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
    domains: Sequence[str],
    plots: bool = True,
) -> list[Path]:
    """Write ``results.md``, ``results.json``, ``cases.csv``, ``timing.csv`` and the plots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if rows:
        write_case_csv(out / "cases.csv", rows)
        written.append(out / "cases.csv")
    if calls:
        write_case_csv(out / "timing.csv", calls)
        written.append(out / "timing.csv")
    images = _plots(out, rows, summary, timing, domains) if plots else []
    written += images
    payload = {"meta": meta, "timing": timing, "targets": targets, "summary": summary}
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=_json_default))
    (out / "results.md").write_text(_markdown(summary, timing, targets, meta, domains, images))
    return written + [out / "results.json", out / "results.md"]


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def _markdown(
    summary: Mapping[str, Any],
    timing: Mapping[str, Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
    domains: Sequence[str],
    images: Sequence[Path],
) -> str:
    env, cfg = meta["environment"], meta["config"]
    lines = [
        "# TTA benchmark results",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {env['cpu']} ({env['cpu_count']} CPUs, {env['torch_threads']} torch threads)"
        + (f", GPU {env['gpu']}" if "gpu" in env else "")
        + f"; device `{env['device']}`; torch {env['torch']}, MONAI {env['monai']}, Python {env['python']}. "
        f"Load average at start / end: {meta.get('loadavg_start')} / {meta.get('loadavg_end')}. "
        f"Total run time {meta.get('total_s', math.nan):.0f} s (source training {meta.get('train_s', 0.0):.0f} s).",
        "",
        f"Data: {cfg['data']} ({cfg['num_per_domain']} cases per target domain, domains {', '.join(domains)}), "
        f"images {cfg['image_size']}x{cfg['image_size']}; network `{cfg['network']}`, source weights "
        f"`{meta.get('checkpoint')}`; AMP {cfg['amp']}, channels-last {cfg['channels_last']}, "
        f"compile {cfg['compile']}"
        + (
            f"; CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, TF32 allowed in convolutions "
            f"{env.get('cudnn_allow_tf32')} / matrix products {env.get('matmul_allow_tf32')}, cuDNN benchmark "
            f"{env.get('cudnn_benchmark')}"
            if "gpu" in env
            else ""
        )
        + ".",
        "",
        "## Cost per case",
        "",
        f"Timing phase: every method called in turn on the same {meta.get('timing_size')}x{meta.get('timing_size')} "
        f"image, {cfg['timing_reps']} rounds (order rotated), median wall time; *runs*: median over all cases of the "
        f"setting runs ({cfg['image_size']}x{cfg['image_size']}). Peak memory of one call on the timing image "
        f"({meta.get('memory_kind')}, median of 3): *extra* = peak minus the memory in use just before the call, "
        "*total* = the peak (see `python -m monai_tta.bench --help` and the module docstring for how). Ratios are to "
        "source-only measured in the same run.",
        "",
        "| method | ms/case | x source-only | ms/case (runs) | x | peak extra MiB | x | peak total MiB | x |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ref = timing.get(_REFERENCE, {})
    run_ms = meta.get("run_time_ms", {})
    for method, t in timing.items():
        r_ms = run_ms.get(method, math.nan)
        lines.append(
            f"| {method} | {_fmt(t['median_ms'])} | {_fmt(_ratio(t['median_ms'], ref.get('median_ms')), 2)} | "
            f"{_fmt(r_ms)} | {_fmt(_ratio(r_ms, run_ms.get(_REFERENCE)), 2)} | {_fmt(t['peak_extra_mb'])} | "
            f"{_fmt(_ratio(t['peak_extra_mb'], ref.get('peak_extra_mb')), 2)} | {_fmt(t['peak_total_mb'])} | "
            f"{_fmt(_ratio(t['peak_total_mb'], ref.get('peak_total_mb')), 2)} |"
        )
    lines += ["", "Methods:", ""]
    lines += [f"- `{m}`: {METHODS[m].description}" for m in timing if m in METHODS]
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for t in targets:
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {_fmt(t['measured'], 2)} | {met} |")
    for setting in SETTINGS:
        if setting not in summary:
            continue
        methods = summary[setting]
        title = f"{setting} ({meta['config']['rounds']} rounds, continual)" if setting == STREAM else setting
        lines += ["", f"## Dice (%), {title}: mean [95% bootstrap interval]", ""]
        lines.append(_dice_table(methods, [*domains, "overall"]))
        asd = {m: {c: b[c].get("asd", math.nan) for c in [*domains, "overall"] if c in b} for m, b in methods.items()}
        if any(math.isfinite(v) for row in asd.values() for v in row.values()):
            lines += ["", f"Average surface distance (pixels), {setting}:", ""]
            lines.append(markdown_table(asd, [*domains, "overall"], row_title="method"))
        if setting == STREAM:
            rounds = sorted({r for b in methods.values() for r in b.get("rounds", {})}, key=int)
            lines += ["", "Dice (%) per round of the stream:", ""]
            per_round = {m: {f"round {r}": b["rounds"][r]["overall"] for r in rounds} for m, b in methods.items()}
            lines.append(_dice_table(per_round, [f"round {r}" for r in rounds]))
    if images:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images]
    return "\n".join(lines) + "\n"


def _plots(
    out: Path,
    rows: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    timing: Mapping[str, Mapping[str, Any]],
    domains: Sequence[str],
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    for setting, methods in summary.items():
        table = {
            m: {d: b[d]["dice"] for d in [*domains, "overall"] if "dice" in b.get(d, {})} for m, b in methods.items()
        }
        if any(table.values()):
            paths.append(
                plot_domain_dice(
                    table, [*domains, "overall"], out / f"dice_{setting}.png", title=f"Dice per domain, {setting}"
                )
            )
    stream_rows = [r for r in rows if r["setting"] == STREAM and "dice_mean" in r]
    if stream_rows:
        fig, ax = plt.subplots(figsize=(10, 3.8))
        window = max(len(stream_rows) // max(len({r["method"] for r in stream_rows}), 1) // 30, 1)
        for method in dict.fromkeys(r["method"] for r in stream_rows):
            sel = sorted((r for r in stream_rows if r["method"] == method), key=lambda r: r["position"])
            dice = np.array([r["dice_mean"] for r in sel])
            smooth = np.convolve(dice, np.ones(window) / window, mode="valid")
            ax.plot(np.arange(smooth.size) + window - 1, smooth, label=method, lw=1.3)
        first = sorted((r for r in stream_rows if r["method"] == stream_rows[0]["method"]), key=lambda r: r["position"])
        for i, r in enumerate(first):
            if i and r[DataKeys.DOMAIN] != first[i - 1][DataKeys.DOMAIN]:
                ax.axvline(i - 0.5, color="grey", lw=1.2 if r["round"] != first[i - 1]["round"] else 0.4, alpha=0.6)
            if i == 0 or r[DataKeys.DOMAIN] != first[i - 1][DataKeys.DOMAIN]:
                ax.text(i, 1.0, r[DataKeys.DOMAIN], transform=ax.get_xaxis_transform(), fontsize=6, va="bottom")
        ax.set_xlabel(f"case along the stream (Dice: moving mean over {window} cases)")
        ax.set_ylabel("Dice (%)")
        ax.legend(fontsize=7, loc="lower right", ncol=3)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(out / "stream_dice.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    if timing:
        ref = timing.get(_REFERENCE, {})
        names = list(timing)
        fig, axes = plt.subplots(1, 2, figsize=(10, 0.5 * len(names) + 1.6))
        for ax, key, title in (
            (axes[0], "median_ms", "time per case"),
            (axes[1], "peak_extra_mb", "peak extra memory per case"),
        ):
            ratios = [_ratio(timing[m][key], ref.get(key)) for m in names]
            ax.barh(names, [0.0 if not math.isfinite(v) else v for v in ratios], color="tab:blue")
            for i, (m, v) in enumerate(zip(names, ratios)):
                unit = "ms" if key == "median_ms" else "MiB"
                ax.text(
                    v if math.isfinite(v) else 0.0,
                    i,
                    f" {_fmt(v, 2)}x ({_fmt(timing[m][key])} {unit})",
                    va="center",
                    fontsize=7,
                )
            ax.set_xlabel(f"{title} / source-only")
            ax.invert_yaxis()
            ax.grid(axis="x", alpha=0.3)
            ax.set_xlim(0, max([v for v in ratios if math.isfinite(v)] + [1.0]) * 1.45)
        fig.tight_layout()
        paths.append(out / "time_per_case.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


# --------------------------------------------------------------------------------------------- main
def _timing_methods(args: argparse.Namespace, device: torch.device) -> list[str]:
    """``--timing-methods``, or the methods plus source-only and the exact GraTa variants that differ from ``grata``
    on this device (the 6 views in one forward; on a GPU also: no CUDA graph, the reference's separate forwards, and
    the joint views)."""
    if args.timing_methods:
        names = list(args.timing_methods)
    else:
        names = list(args.methods)
        if "grata" in names:
            variants = ["grata_batched"]
            variants += [] if device.type == "cpu" else ["grata_eager", "grata_separate", "grata_joint"]
            names += [v for v in variants if v not in names]
    if _REFERENCE not in names:
        names.insert(0, _REFERENCE)
    return names


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Run the whole benchmark described by ``args`` (see :func:`parse_args`) and write its outputs.

    Returns:
        ``{"summary", "timing", "targets", "rows", "files"}``.
    """
    start = time.perf_counter()
    loadavg_start = _loadavg()
    if args.threads:
        torch.set_num_threads(int(args.threads))
    device = _resolve_device(args.device)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    amp = _AMP[args.amp]
    out = Path(args.out)
    args.cache = str(Path(args.cache) if args.cache else out / "cache")
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    ignore = Path(args.cache) / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# generated data and trained checkpoints of the benchmark\n*\n")

    data = prepare_data(args)
    train_start = time.perf_counter()
    network, checkpoint = prepare_network(args, data, device)
    train_s = time.perf_counter() - train_start
    cases = data["cases"]
    logger.info(f"{sum(len(v) for v in cases.values())} target cases in {list(cases)}; device {device}")

    rows: list[dict[str, Any]] = []
    for setting in [] if args.timing_only else args.settings:
        for method in args.methods:
            t0 = time.perf_counter()
            new = run_cases(
                method,
                setting,
                network,
                cases,
                device,
                rounds=args.rounds,
                image_size=args.image_size,
                seed=args.seed,
                amp=amp,
                channels_last=args.channels_last,
                compile_net=args.compile,
                compute_asd=not args.no_asd,
                channel_names=data["channel_names"],
            )
            rows += new
            dice = np.mean([r["dice_mean"] for r in new]) if new and "dice_mean" in new[0] else math.nan
            logger.info(f"{setting:>10} {method:>14}: Dice {dice:.2f}, {time.perf_counter() - t0:.1f} s")

    timing_methods = _timing_methods(args, device)
    first = next(iter(cases.values()))[0]["image"]
    timing_size = args.timing_size or args.image_size
    image = (
        first
        if timing_size == first.shape[-1]
        else F.interpolate(first, size=(timing_size, timing_size), mode="bilinear")
    )
    timing, calls = time_methods(
        timing_methods,
        network,
        image,
        device,
        reps=args.timing_reps,
        seed=args.seed,
        amp=amp,
        channels_last=args.channels_last,
        compile_net=args.compile,
    )
    if args.no_memory:
        memory = {
            m: {"memory_kind": "not measured", "peak_extra_mb": math.nan, "peak_total_mb": math.nan} for m in timing
        }
    else:
        memory = measure_memory(
            timing_methods, network, image, device, seed=args.seed, amp=amp, channels_last=args.channels_last
        )
    for name in timing:
        timing[name].update(memory[name])
    for name, t in timing.items():
        logger.info(f"timing {name:>14}: {t['median_ms']:.1f} ms/case, peak extra {t['peak_extra_mb']:.1f} MiB")

    domains = list(cases)
    summary = summarize_runs(rows, domains)
    targets = check_targets(timing, summary, device)
    run_time = {m: float(np.median([r["time_ms"] for r in rows if r["method"] == m])) for m in args.methods if rows}
    meta = {
        "command": "python -m monai_tta.bench" + ("" if not args.argv else " " + shlex.join(args.argv)),
        "environment": _environment(device),
        "config": {k: v for k, v in vars(args).items() if k != "argv"},
        "checkpoint": str(checkpoint),
        "timing_size": timing_size,
        "memory_kind": next(iter(timing.values()))["memory_kind"] if timing else "unavailable",
        "run_time_ms": run_time,
        "loadavg_start": loadavg_start,
        "loadavg_end": _loadavg(),
        "train_s": train_s,
        "total_s": time.perf_counter() - start,
    }
    files = write_outputs(out, rows, summary, timing, calls, targets, meta, domains, plots=not args.no_plots)
    logger.info(f"wrote {', '.join(p.name for p in files)} to {out} in {meta['total_s']:.0f} s")
    return {"summary": summary, "timing": timing, "targets": targets, "rows": rows, "files": files}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m monai_tta.bench [options]``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    result = run_benchmark(args)
    for t in result["targets"]:
        met = "n/a" if t["met"] is None else ("met" if t["met"] else "MISSED")
        print(f"{t['target']}: {_fmt(t['measured'], 2)} ({met})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
