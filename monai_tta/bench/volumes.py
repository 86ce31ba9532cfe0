"""3D data and network of the benchmark: the embedded multi-site MR volumes, read and preprocessed by the 3D bundle's
``inference.json``, and its 3D network with source weights trained by its source-training config on first use.

The bundle (``bundles/grata_prostate_mr_segmentation`` by default, ``--vol-bundle``) is the single source of the
geometry: its ``preprocessing`` (``LoadImaged``, ``Orientationd`` RAS, ``Spacingd``, intensity normalisation, label
channels), its ``network_def``, its ``channel_names``, and the options of its ``inferer`` (a
:class:`~monai_tta.inferers.SlidingWindowAdapter`: ``roi_size``, ``sw_batch_size``, ``overlap``, ``mode``, ...), which
the benchmark reuses for every method so that all of them see the same windows.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from monai_tta.bench.data import load_source_weights, preprocess_cases, training_config

__all__ = [
    "VOLUME_BUNDLE",
    "VOLUME_METHODS",
    "VOLUME_PASSES",
    "volume_parser",
    "window_options",
    "window_overrides",
    "adapter_options",
    "prepare_volumes",
    "prepare_volume_network",
]

#: the 3D bundle whose configs give the preprocessing, the network, the sliding window and the source training.
VOLUME_BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "grata_prostate_mr_segmentation"
#: the methods of the 3D runs when ``--vol-methods`` is not given.
VOLUME_METHODS = ("source_only", "norm_adapt", "tent", "grata")
#: what one call of each method computes on a volume through the sliding-window adapter (K: ``num_patches``).
VOLUME_PASSES = {
    "source_only": "the sliding-window prediction with the source model and its running statistics (the reference)",
    "norm_adapt": "the per-volume BatchNorm statistics (a no-grad forward of the K patches, or of the "
    "non-overlapping tiles with stats_from=tiles), then the sliding-window prediction with them; no gradient",
    "tent": "entropy forward + backward on the K patches (gradients averaged; batches of update_batch_size patches; "
    "with stats_from=patches and K <= update_batch_size that forward also gives the per-volume statistics, else a "
    "no-grad statistics pass runs first), one Adam step on the BatchNorm affine parameters; the sliding-window "
    "prediction",
    "grata": "the same statistics; on the K patches (batches of update_batch_size), in two sweeps: entropy forward + "
    "backward at theta, then at theta' the 6 pseudo-label views (forwards) and the strong view (forward + backward); "
    "one step with the cosine learning rate; the sliding-window prediction",
}
#: keys of the bundle's ``inferer`` that are not sliding-window options.
_NOT_WINDOW = ("_target_", "_desc_", "_requires_", "_disabled_", "_mode_", "adapter")


def volume_parser(bundle: str | Path, dataset_dir: str | Path, device: torch.device, seed: int) -> Any:
    """A ``ConfigParser`` of the bundle's ``inference.json`` reading ``dataset_dir`` on ``device``;
    its ``output_dir`` (where a source training records itself) is ``<dataset_dir>_runs``, so that nothing is written
    into the bundle folder."""
    from monai.bundle import ConfigParser

    bundle = Path(bundle)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update(
        {
            "bundle_root": str(bundle),
            "dataset_dir": str(dataset_dir),
            "output_dir": f"{dataset_dir}_runs",
            "datalist_file": str(Path(dataset_dir) / "datalist.json"),
            "generate_data": False,
            "device": f"$torch.device({str(device)!r})",
            "seed": int(seed),
        }
    )
    return parser


def window_options(parser: Any) -> dict[str, Any]:
    """The sliding-window options of the bundle's ``inferer`` (everything but its target and its adapter), parsed."""
    raw = parser.get("inferer")
    if not isinstance(raw, Mapping):
        raise ValueError(f"the bundle's 'inferer' must be a config dictionary of a SlidingWindowAdapter, got {raw!r}.")
    return {k: parser.get_parsed_content(f"inferer::{k}") for k in raw if k not in _NOT_WINDOW}


def window_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``--vol-window`` ``KEY=VALUE`` pairs as options of :class:`~monai_tta.inferers.SlidingWindowAdapter` (or of
    MONAI's ``SlidingWindowInferer``, which it passes on); each value is read as JSON, else kept as text.

    Raises:
        ValueError: for a pair without ``=`` or a key that neither class takes.
    """
    from monai.inferers import SlidingWindowInferer

    from monai_tta.inferers import SlidingWindowAdapter

    known = set(inspect.signature(SlidingWindowAdapter).parameters) | set(
        inspect.signature(SlidingWindowInferer).parameters
    )
    known -= {"adapter", "kwargs", "args"}
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in known:
            raise ValueError(
                f"--vol-window {pair!r}: expected KEY=VALUE with KEY an option of the sliding-window adapter, "
                f"one of {sorted(known)}."
            )
        try:
            options[key] = json.loads(text)
        except json.JSONDecodeError:
            options[key] = text
    return options


def adapter_options(window: Mapping[str, Any]) -> dict[str, Any]:
    """Every option of the :class:`~monai_tta.inferers.SlidingWindowAdapter` built with ``window`` (its defaults
    included: patches per update, their sampling, statistics passes), as recorded with the results."""
    from monai_tta.adapters import SourceOnly
    from monai_tta.inferers import SlidingWindowAdapter

    sw = SlidingWindowAdapter(SourceOnly(), **dict(window))
    names = ("roi_size", "sw_batch_size", "overlap", "mode", "num_patches", "patch_sampling", "stats_from")
    names += ("update_batch_size", "stats_passes")
    options = {name: getattr(sw, name) for name in (*names, "stats_after_update")}
    return {k: v if isinstance(v, (int, float, bool, type(None), list)) else str(v) for k, v in options.items()}


def _dataset_dir(args: argparse.Namespace) -> Path:
    return Path(args.cache) / f"mr_sites_s{args.seed}_train{args.vol_num_source}_test{args.vol_cases}"


def prepare_volumes(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Generate the multi-site MR volumes into the cache (first use), preprocess every target test volume once.

    Args:
        args: the parsed command line (``vol_sites``, ``vol_cases``, ``vol_num_source``, ``vol_bundle``,
            ``vol_patches``, ``vol_window``, ``cache``, ``seed``).
        device: the device of the bundle's network.

    Returns:
        ``{"datalist", "domains", "cases", "preprocessing", "channel_names", "window", "parser"}`` (``window``: the
        bundle's sliding-window options, updated by ``--vol-window`` and with ``num_patches`` = ``--vol-patches``
        when given); a case holds
        ``image`` ``(1, 1, D, H, W)`` and ``label`` ``(C, D, H, W)`` (one channel per zone), ``domain`` (the site)
        and ``case_id``.

    Raises:
        ValueError: for an unknown site, or the source site given as a target.
    """
    from monai_tta.data import SOURCE_DOMAIN, generate_mr_sites, list_mr_sites, load_datalist

    known = list_mr_sites("all")  # the default sites and the content sites (selectable by name)
    sites = list(args.vol_sites or [s for s in list_mr_sites() if s != SOURCE_DOMAIN])
    wrong = [s for s in sites if s not in known or s == SOURCE_DOMAIN]
    if wrong:
        raise ValueError(
            f"--vol-sites {wrong}: not target MR sites; choose from {[s for s in known if s != 'source']}."
        )
    root = _dataset_dir(args)
    datalist = generate_mr_sites(
        root, num_train=args.vol_num_source, num_test=args.vol_cases, seed=args.seed, sites=[SOURCE_DOMAIN, *sites]
    )
    parser = volume_parser(args.vol_bundle, root, device, args.seed)
    preprocessing = parser.get_parsed_content("labelled_preprocessing")  # image and label
    window = window_options(parser)
    window.update(getattr(args, "vol_window", None) or {})
    if args.vol_patches:
        window["num_patches"] = int(args.vol_patches)
    sections = load_datalist(datalist, [f"{s}_test" for s in sites])
    cases = preprocess_cases({s: sections[f"{s}_test"] for s in sites}, preprocessing)
    return {
        "datalist": datalist,
        "domains": sites,
        "cases": cases,
        "preprocessing": preprocessing,
        "channel_names": list(parser.get_parsed_content("channel_names")),
        "window": window,
        "parser": parser,
    }


def _bundle_digest(bundle: str | Path) -> str:
    """8 hex digits of the bundle's ``inference.json`` and source-training config and of the MR generator's version:
    a cached source model is retrained when the data, the preprocessing, the network or the training change."""
    from monai_tta.data import MR_GENERATOR_VERSION

    digest = hashlib.sha256(str(MR_GENERATOR_VERSION).encode())
    for path in (Path(bundle) / "configs" / "inference.json", training_config(bundle)):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:8]


def _bundle_epochs(bundle: str | Path) -> int:
    """The number of epochs of the bundle's source training (``epochs`` of its source-training config)."""
    from monai.bundle import ConfigParser

    return int(ConfigParser.load_config_file(str(training_config(bundle)))["epochs"])


def prepare_volume_network(
    args: argparse.Namespace, data: Mapping[str, Any], device: torch.device
) -> tuple[nn.Module, Path]:
    """The bundle's 3D network with source weights, trained on the source site on first use.

    Training runs the bundle's ``inference.json`` + source-training config with the overrides its own inference run
    passes
    (its ``source_training`` block: network, device, data, geometry) and ``epochs`` (``--vol-epochs``, or the
    config's default);
    the checkpoint goes to the cache folder, never into the bundle's ``models``, under a name that holds the
    training size, the epochs, the seed and a digest of the bundle's configs and the generator's version.

    Args:
        args: the parsed command line (``vol_checkpoint``, ``vol_epochs``, ``vol_num_source``, ``vol_bundle``,
            ``cache``, ``seed``).
        data: what :func:`prepare_volumes` returned.
        device: where the network goes.

    Raises:
        FileNotFoundError: if a given ``--vol-checkpoint`` does not exist.
    """
    from monai.utils import set_determinism

    parser = data["parser"]
    set_determinism(seed=args.seed)  # seed the initial weights
    network = parser.get_parsed_content("network")
    training = dict(parser.get_parsed_content("source_training"))
    training["epochs"] = int(args.vol_epochs or _bundle_epochs(args.vol_bundle))
    if args.vol_checkpoint:
        checkpoint = Path(args.vol_checkpoint)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"--vol-checkpoint {checkpoint} does not exist; omit it to train one.")
    else:
        tag = _bundle_digest(args.vol_bundle)
        name = f"source_mr_train{args.vol_num_source}_e{training['epochs']}_s{args.seed}_{tag}.pt"
        checkpoint = Path(args.cache) / name
    load_source_weights(network, checkpoint, args.vol_bundle, training)
    set_determinism(seed=None)
    return network.eval(), checkpoint
