"""Data, network and device of the benchmark: the target cases preprocessed once, the source network with its
weights (trained on first use), and the per-method network copies."""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from monai_tta.data.keys import DataKeys

__all__ = [
    "NETWORKS",
    "DEFAULT_BUNDLE",
    "resolve_device",
    "bundle_parser",
    "prepare_data",
    "prepare_network",
    "preprocess_cases",
    "training_config",
    "load_source_weights",
    "prepare_copy",
    "to_device",
]

logger = logging.getLogger("monai_tta.bench")

#: the networks of ``--network``.
NETWORKS = ("small", "resunet34")
#: the bundle whose configs give the preprocessing and the network, and whose source-training config trains the
#: source model.
DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "grata_fundus_segmentation"


def resolve_device(name: str) -> torch.device:
    """The device of ``--device`` (``auto``: CUDA when available, else the CPU).

    Raises:
        ValueError: if a CUDA device is asked for and CUDA is not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available here.")
    return device


def bundle_parser(bundle: Path, image_size: int, network: str) -> Any:
    """A ``ConfigParser`` of the bundle's ``inference.json`` at ``image_size`` (and its ResUNet-34 variant)."""
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

    Args:
        args: the parsed command line (``data``, ``domains``, ``num_per_domain``, ``num_source``, ``image_size``,
            ``network``, ``bundle``, ``cache``, ``seed``).

    Returns:
        ``{"datalist": path, "source_datalist": path or None, "domains": [...], "cases": {domain: [case, ...]},
        "preprocessing": the bundle's labelled preprocessing, "channel_names": [...]}``; a case holds ``image``
        ``(1, C, H, W)`` and ``label`` ``(C', H, W)`` tensors, ``domain`` and ``case_id``.

    Raises:
        ValueError: if a datalist file is given without ``--domains`` and has no ``domains`` list.
    """
    from monai_tta.data import SOURCE_DOMAIN, generate_fundus_domains, list_domains, load_datalist

    cache = Path(args.cache)
    parser = bundle_parser(Path(args.bundle), args.image_size, args.network)
    # image and label (the bundle's "preprocessing" is the image only, what a served request has)
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
    cases = preprocess_cases({d: sections[d] for d in domains}, preprocessing)
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
    """The source network with its weights (trained by the bundle's source-training config when missing).

    Args:
        args: the parsed command line (``checkpoint``, ``network``, ``image_size``, ``num_source``,
            ``source_epochs``, ``bundle``, ``cache``, ``seed``).
        data: what :func:`prepare_data` returned.
        device: where the network goes.

    Raises:
        FileNotFoundError: if the checkpoint is missing and no source training data is known.
    """
    from monai.utils import set_determinism

    parser = data["parser"]
    set_determinism(seed=args.seed)  # torch's default generator is seeded at random: seed the initial weights
    network = parser.get_parsed_content("network_def").to(device)
    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
    else:
        name = f"source_{args.network}_{args.image_size}_n{args.num_source}_e{args.source_epochs}_s{args.seed}.pt"
        checkpoint = Path(args.cache) / name
    overrides = {
        "epochs": int(args.source_epochs),
        "network": network,
        "labelled_preprocessing": data["preprocessing"],
        "datalist_file": str(data["source_datalist"]),
        "generate_data": False,  # the data is this run's (nothing is written into the bundle folder)
        "output_dir": str(Path(args.cache) / "source_training_runs"),
        "device": device,
        "seed": int(args.seed),
    }
    load_source_weights(network, checkpoint, args.bundle, overrides if data["source_datalist"] else None)
    set_determinism(seed=None)
    return network.eval(), checkpoint


def preprocess_cases(
    sections: Mapping[str, Sequence[Mapping[str, Any]]], preprocessing: Callable[[dict], Mapping[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """Preprocess every case of every domain once, to keep them in memory for all methods and settings.

    Args:
        sections: ``{domain: [datalist item, ...]}``.
        preprocessing: the bundle's preprocessing (a dictionary transform).

    Returns:
        ``{domain: [case, ...]}``; a case holds ``image`` (a batch of one, ``(1, C, *spatial)``), ``label``
        (``(C', *spatial)`` or ``None``), ``domain`` and ``case_id``.
    """
    cases: dict[str, list[dict[str, Any]]] = {}
    for domain, items in sections.items():
        cases[domain] = []
        for item in items:
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
    return cases


def training_config(bundle: str | Path) -> Path:
    """The bundle's source-training config: ``configs/source_training.json``, or ``configs/train.json`` in a bundle
    without it.

    Raises:
        FileNotFoundError: if the bundle has neither.
    """
    configs = Path(bundle) / "configs"
    for name in ("source_training.json", "train.json"):
        if (configs / name).is_file():
            return configs / name
    raise FileNotFoundError(f"{configs}: no source_training.json or train.json to train the source model with.")


def load_source_weights(
    network: nn.Module, checkpoint: Path, bundle: str | Path, training: Mapping[str, Any] | None
) -> None:
    """Load the source weights into ``network``, training them first with the bundle's ``inference.json`` and its
    source-training config (:func:`training_config`) when ``checkpoint`` is missing (into ``checkpoint``, never into
    the bundle's ``models``).

    Args:
        network: the source network (trained in place when the checkpoint is missing).
        checkpoint: the source weights.
        bundle: the bundle folder that trains the source model.
        training: overrides of the training run (``epochs``, ``network``, ``datalist_file``, ...); ``None`` when no
            source training data is known.

    Raises:
        FileNotFoundError: if the checkpoint is missing and no source training data is known.
    """
    from monai_tta.networks import load_reference_state_dict
    from monai_tta.zoo.source import ensure_source_checkpoint

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        if training is None:
            raise FileNotFoundError(
                f"source checkpoint {checkpoint} is missing and the datalist has no source_train section: pass the "
                "source weights (--checkpoint) or a datalist with source_train."
            )
        logger.info(f"training the source model ({training.get('epochs', 'default')} epochs) into {checkpoint}")
        start = time.perf_counter()
        ensure_source_checkpoint(checkpoint, bundle, training, configs=("inference.json", training_config(bundle).name))
        logger.info(f"source training took {time.perf_counter() - start:.0f} s")
    load_reference_state_dict(network, str(checkpoint))


def prepare_copy(network: nn.Module, channels_last: bool = False, compile_net: bool = False) -> nn.Module:
    """A copy of ``network`` for one method (channels-last and ``torch.compile`` when asked); the source stays as is."""
    net = copy.deepcopy(network)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if compile_net:
        net = torch.compile(net, dynamic=False)
    return net


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """``x`` on ``device`` (a 4D batch in channels-last memory format when asked)."""
    x = x.to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x
