"""Data, network and device of the benchmark, all from the bundles' configs: the target cases (read and preprocessed
once by the bundle's evaluation transform, labels as stored), the source network with its weights (trained on first
use by the bundle's ``source_training.json``, into the cache folder), and the 3D bundle's sliding window."""

from __future__ import annotations

import argparse
import copy
import hashlib
import inspect
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from monai_tta.bench.methods import BUNDLES, method_parser

__all__ = ["NETWORKS", "DEFAULT_BUNDLE", "VOLUME_BUNDLE", "window_overrides", "prepare", "prepare_copy"]

logger = logging.getLogger("monai_tta.bench")

#: the networks of ``--network``.
NETWORKS = ("small", "resunet34")
#: the bundles whose source-training configs train the source models (2D, 3D).
DEFAULT_BUNDLE = BUNDLES / "grata_fundus_segmentation"
VOLUME_BUNDLE = BUNDLES / "grata_prostate_mr_segmentation"
#: keys of the 3D bundle's ``inferer`` that are not sliding-window options.
_NOT_WINDOW = ("_target_", "_desc_", "_requires_", "_disabled_", "_mode_", "adapter")
#: the options of the sliding-window adapter recorded with the 3D results.
WINDOW_RECORD = ("roi_size", "sw_batch_size", "overlap", "mode", "num_patches", "patch_sampling", "stats_from")
WINDOW_RECORD += ("update_batch_size", "stats_passes", "stats_after_update")


def window_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``--vol-window`` ``KEY=VALUE`` pairs as options of the sliding-window ``inferer`` (values read as JSON, else
    kept as text).

    Raises:
        ValueError: for a pair without ``=`` or a key that the sliding-window adapter does not take.
    """
    from monai.inferers import SlidingWindowInferer

    from monai_tta.inferers import SlidingWindowAdapter

    known = {*inspect.signature(SlidingWindowAdapter).parameters, *inspect.signature(SlidingWindowInferer).parameters}
    known -= {"adapter", "kwargs", "args"}
    options: dict[str, Any] = {}
    for key, sep, text in (pair.partition("=") for pair in pairs):
        if not sep or key not in known:
            raise ValueError(f"--vol-window {key}{sep}{text!r}: expected KEY=VALUE with KEY one of {sorted(known)}.")
        try:
            options[key] = json.loads(text)
        except json.JSONDecodeError:
            options[key] = text
    return options


def _targets_2d(args: argparse.Namespace) -> tuple[dict[str, Any], Path | None, Path, list[str]]:
    """The 2D run's overrides, source datalist, target datalist and domains (embedded data generated on first use)."""
    from monai_tta.data import SOURCE_DOMAIN, generate_fundus_domains, list_domains

    cache, overrides = Path(args.cache), {"image_size": int(args.image_size)}
    if args.network == "resunet34":
        overrides["network_def"] = {"_target_": "monai_tta.networks.ResUNet", "in_channels": 3, "out_channels": 2}
    if args.data != "synthetic":
        datalist = Path(args.data)
        content = json.loads(datalist.read_text())
        domains = list(args.domains or content.get("domains") or [])
        if not domains:
            raise ValueError(f"{datalist}: pass --domains (the file has no 'domains' list).")
        return overrides, datalist if "source_train" in content else None, datalist, domains
    domains = list(args.domains or [d for d in list_domains() if d != SOURCE_DOMAIN])
    root, kwargs = (
        cache / f"synthetic_fundus_{args.image_size}_s{args.seed}",
        {"image_size": args.image_size, "seed": args.seed},
    )
    target = generate_fundus_domains(f"{root}_n{args.num_per_domain}", args.num_per_domain, domains=domains, **kwargs)
    source = generate_fundus_domains(
        f"{root}_source{args.num_source}", args.num_source, domains=[SOURCE_DOMAIN], **kwargs
    )
    return overrides, source, target, domains


def _targets_3d(args: argparse.Namespace) -> tuple[Path, Path, Path | None, list[str]]:
    """The 3D run's data folder, target datalist, source datalist (``None`` without ``source_train``) and sites: the
    embedded sites (generated on first use) or ``--vol-data``."""
    from monai_tta.data import SOURCE_DOMAIN, generate_mr_sites, list_mr_sites

    if args.vol_data:
        datalist = Path(args.vol_data)
        content = json.loads(datalist.read_text())
        domains = list(args.vol_sites or [d for d in content.get("domains") or [] if f"{d}_test" in content])
        missing = [d for d in domains if f"{d}_test" not in content]
        if not domains or missing:
            raise ValueError(
                f"--vol-data {datalist}: no '<site>_test' section for {missing or 'any site'}; name the sites with "
                "--vol-sites (each needs a '<site>_test' section) or list them under 'domains'."
            )
        return datalist.parent, datalist, datalist if "source_train" in content else None, domains
    known = list_mr_sites("all")  # the default sites and the content sites (selectable by name)
    domains = list(args.vol_sites or [s for s in list_mr_sites() if s != SOURCE_DOMAIN])
    if any(s not in known or s == SOURCE_DOMAIN for s in domains):
        raise ValueError(f"--vol-sites {domains}: choose from {[s for s in known if s != SOURCE_DOMAIN]}.")
    root = Path(args.cache) / f"mr_sites_s{args.seed}_train{args.vol_num_source}_test{args.vol_cases}"
    sites = [SOURCE_DOMAIN, *domains]
    datalist = generate_mr_sites(root, args.vol_num_source, args.vol_cases, seed=args.seed, sites=sites)
    return root, datalist, datalist, domains


def prepare(args: argparse.Namespace, dims: int, device: torch.device) -> dict[str, Any]:
    """The target cases, preprocessed once, and the source network of a ``dims``-D run.

    The cases go through the evaluation transform of the bundle (``evaluate.json``'s ``dataset#transform``: the
    label as stored, the image preprocessed) and stay in memory for every method and setting; the source network is
    the bundle's ``network_def`` with weights from the checkpoint, trained on first use by the bundle's source-training
    config (the overrides of its own ``source_training`` block, ``epochs`` from the command line). A cached 3D source
    model's name holds a digest of the bundle's configs and of the data generator: it is retrained when they change.

    Returns:
        ``{"cases": {domain: [item, ...]}, "network", "checkpoint", "overrides"`` (what every method's parser gets),
        ``"window"`` (3D: the sliding-window options), ``"datalist"}``.

    Raises:
        ValueError: for an unknown target site.
        FileNotFoundError: if a checkpoint is missing and no source training data is known.
    """
    from monai.bundle import ConfigParser
    from monai.utils import set_determinism

    from monai_tta.data import MR_GENERATOR_VERSION, load_datalist
    from monai_tta.networks import load_reference_state_dict
    from monai_tta.zoo.source import ensure_source_checkpoint

    cache = Path(args.cache)
    if dims == 2:
        overrides, source, datalist, domains = _targets_2d(args)
        sections = {d: items[: args.num_per_domain] for d, items in load_datalist(datalist, domains).items()}
        bundle, epochs = DEFAULT_BUNDLE, int(args.source_epochs)
        name = f"source_{args.network}_{args.image_size}_n{args.num_source}_e{epochs}_s{args.seed}.pt"
        checkpoint = Path(args.checkpoint) if args.checkpoint else cache / name
    else:
        root, datalist, source, domains = _targets_3d(args)
        bundle = VOLUME_BUNDLE
        overrides = {"dataset_dir": str(root), "datalist_file": str(datalist), "output_dir": f"{root}_runs"}
        sections = {s: load_datalist(datalist, [f"{s}_test"])[f"{s}_test"][: args.vol_cases] for s in domains}
        epochs = args.vol_epochs
        checkpoint = Path(args.vol_checkpoint) if args.vol_checkpoint else None
    overrides.update({"generate_data": False, "device": device})
    parser = method_parser("source_only", "domain", dims, overrides, args.seed)
    transform = parser.get_parsed_content("dataset#transform")
    cases = {
        d: [
            {**transform(dict(item)), "domain": d, "case_id": str(item.get("case_id", i))} for i, item in enumerate(its)
        ]
        for d, its in sections.items()
    }
    set_determinism(seed=args.seed)  # torch's default generator is seeded at random: seed the initial weights
    network = parser.get_parsed_content("network_def").to(device)
    configs = [bundle / "configs" / "inference.json", bundle / "configs" / "source_training.json"]
    training = dict(parser.get_parsed_content("source_training"))
    epochs = int(ConfigParser.load_config_file(str(configs[1]))["epochs"]) if epochs is None else epochs
    training.update(epochs=int(epochs), network=network, datalist_file=str(source), seed=int(args.seed))
    training["output_dir"] = str(cache / "source_training_runs") if dims == 2 else training["output_dir"]
    if checkpoint is None:
        digest = hashlib.sha256(str(MR_GENERATOR_VERSION).encode())
        for path in configs:
            digest.update(path.read_bytes())
        checkpoint = cache / f"source_mr_train{args.vol_num_source}_e{epochs}_s{args.seed}_{digest.hexdigest()[:8]}.pt"
    if not checkpoint.is_file():
        if source is None:
            raise FileNotFoundError(
                f"source checkpoint {checkpoint} is missing and the datalist has no source_train section: pass the "
                "source weights (--checkpoint in 2D, --vol-checkpoint in 3D) or a datalist with source_train."
            )
        logger.info(f"training the source model ({epochs} epochs) into {checkpoint}")
        ensure_source_checkpoint(checkpoint, bundle, training, configs=("inference.json", configs[1].name))
    load_reference_state_dict(network, str(checkpoint))
    set_determinism(seed=None)
    window = {}
    if dims == 3:
        window = {k: parser.get_parsed_content(f"inferer#{k}") for k in parser.get("inferer") if k not in _NOT_WINDOW}
        window.update(getattr(args, "vol_window", None) or {})
        window.update({"num_patches": int(args.vol_patches)} if args.vol_patches else {})
    # the transform the cases went through: the evaluators invert it (Invertd checks the transforms' identity)
    overrides = {
        **{k: v for k, v in overrides.items() if k != "device"},
        "preprocessing": parser.get_parsed_content("preprocessing"),
    }
    return {
        "cases": cases,
        "network": network.eval(),
        "checkpoint": checkpoint,
        "overrides": overrides,
        "window": window,
        "datalist": datalist,
    }


def prepare_copy(network: nn.Module, channels_last: bool = False, compile_net: bool = False) -> nn.Module:
    """A copy of ``network`` for one method (channels-last and ``torch.compile`` when asked); the source stays as is."""
    net = copy.deepcopy(network)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return torch.compile(net, dynamic=False) if compile_net else net
