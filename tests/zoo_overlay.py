"""The TTA overlay on Model Zoo segmentation bundles: prepare a bundle folder, run it plain and adapted, measure.

Used by ``tests/test_zoo_overlay.py`` (on our zoo-style configs under ``tests/zoo_style/``, or on the real zoo configs
when a folder of them is given) and as the measurement command of ``docs/zoo.md``::

    python tests/zoo_overlay.py --configs DIR --bundle spleen_ct_segmentation --method tent [--size 32] [--cases 2]

A run is what ``python -m monai.bundle run --config_file "['configs/inference.json','configs/tta.json']"`` does
(MONAI's ``ConfigWorkflow``: parse, ``initialize``, ``run``), in this process so that the adapter's statistics and the
network can be read afterwards. Nothing is downloaded: the volumes are synthetic NIfTI files with an oblique affine and
``models/model.pt`` is the network's random initialisation, saved here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from torch import nn

__all__ = ["ZooBundle", "BUNDLES", "overlay", "prepare_bundle", "run_bundle", "RunResult", "norm_parameter_names"]

METHODS = {"grata": "monai_tta.adapters.GraTa", "tent": "monai_tta.adapters.Tent"}
PLAIN = "plain"
NORM_NAMES = "norm_parameters.json"


def _paths(files: list[list[str]]) -> list[str]:
    return [f[0] for f in files]


def _dicts(files: list[list[str]]) -> list[dict[str, Any]]:
    return [{"image": f[0]} for f in files]


def _multi(files: list[list[str]]) -> list[dict[str, Any]]:
    return [{"image": f} for f in files]


@dataclass
class ZooBundle:
    """What the harness needs to know of one zoo bundle (the rest is read from its ``inference`` config).

    Attributes:
        activation: ``"softmax"`` (exclusive classes: the bundle ends in softmax or argmax) or ``"sigmoid"``.
        datalist_key: the config key holding the test images.
        datalist: builds that key's value from the case files (one list of files per case).
        channels: image channels (one file per channel for multi-file cases).
        spacing: voxel size of the synthetic volumes (mm).
        overrides: the zoo-side workarounds for MONAI 1.6 on a CPU (``docs/zoo.md``).
        extra: files the bundle loads besides ``models/model.pt`` (written by ``write_extra``).
    """

    activation: str
    datalist_key: str
    datalist: Callable[[list[list[str]]], Any]
    channels: int = 1
    spacing: tuple[float, float, float] = (1.5, 1.5, 2.0)
    overrides: dict[str, Any] = field(default_factory=dict)
    write_extra: Callable[[Path, dict[str, Any]], None] | None = None


def write_dints_arch(bundle_dir: Path, config: dict[str, Any]) -> None:
    """A DiNTS architecture file like the bundle's ``search_code_*.pt`` (numpy arrays, so ``torch.load`` needs
    ``weights_only=False``): the decoded architecture of a seeded random ``TopologySearch`` of the bundle's space."""
    from monai.networks.nets import TopologySearch

    space = config["dints_space"]
    torch.manual_seed(0)
    search = TopologySearch(
        channel_mul=space["channel_mul"],
        num_blocks=space["num_blocks"],
        num_depths=space["num_depths"],
        use_downsample=space["use_downsample"],
        device="cpu",
    )
    node_a, code_a, code_c, _ = search.decode()
    path = bundle_dir / "models" / Path(str(config["arch_ckpt_path"]).split("'")[-2]).name
    torch.save(
        {"node_a": np.asarray(node_a), "arch_code_a": np.asarray(code_a), "arch_code_c": np.asarray(code_c)}, path
    )


BUNDLES: dict[str, ZooBundle] = {
    "spleen_ct_segmentation": ZooBundle("softmax", "datalist", _paths),
    "prostate_mri_anatomy": ZooBundle("softmax", "datalist", _paths, spacing=(1.0, 1.0, 1.0)),
    "brats_mri_segmentation": ZooBundle("sigmoid", "test_datalist", _multi, channels=4, spacing=(1.0, 1.0, 1.0)),
    "swin_unetr_btcv_segmentation": ZooBundle(
        "softmax",
        "datalist",
        _paths,
        overrides={"network_def#img_size": None},  # removed from SwinUNETR in MONAI 1.5
    ),
    "pancreas_ct_dints_segmentation": ZooBundle(
        "softmax",
        "datalist",
        _dicts,
        spacing=(1.0, 1.0, 1.0),
        overrides={
            "arch_ckpt": "$torch.load(@arch_ckpt_path, map_location='cpu', weights_only=False)",
            "dints_space#device": "$torch.device('cpu')",
        },
        write_extra=write_dints_arch,
    ),
}


def config_file(configs: Path) -> Path:
    """The bundle's inference config (``inference.json`` or ``inference.yaml``)."""
    for name in ("inference.json", "inference.yaml"):
        if (configs / name).is_file():
            return configs / name
    raise FileNotFoundError(f"no inference.json or inference.yaml in {configs}")


def overlay(
    method: str,
    activation: str,
    roi_size: Sequence[int],
    sw_batch_size: int,
    overlap: float,
    setting: str = "episodic",
    **inferer_kwargs: Any,
) -> dict[str, Any]:
    """The overlay (``configs/tta.json``): the bundle's ``inferer`` replaced by ``SlidingWindowAdapter`` around the
    method, with the bundle's own window, batch and overlap, the bundle's activation and per-patient adaptation."""
    return {
        "adapter": {"_target_": METHODS[method], "activation": activation, "setting": setting},
        "inferer": {
            "_target_": "monai_tta.inferers.SlidingWindowAdapter",
            "adapter": "@adapter",
            "roi_size": list(roi_size),
            "sw_batch_size": sw_batch_size,
            "overlap": overlap,
            **inferer_kwargs,
        },
    }


def _drop_none(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply ``key#path: None`` overrides as deletions (what a command line cannot do: remove an argument)."""
    kept = {}
    for key, value in overrides.items():
        if value is None:
            *parents, last = key.split("#")
            node = config
            for p in parents:
                node = node[p]
            node.pop(last, None)
        else:
            kept[key] = value
    return kept


def _without_skimage(config: dict[str, Any]) -> None:
    """Where scikit-image is not installed, the postprocessing's ``KeepLargestConnectedComponentd`` (which needs it)
    becomes ``Identityd`` (the masks keep their grid; only the connected-component cleaning is skipped)."""
    if importlib.util.find_spec("skimage") is not None:
        return
    for transform in config.get("postprocessing", {}).get("transforms", []):
        if str(transform.get("_target_", "")).endswith("KeepLargestConnectedComponentd"):
            transform.clear()
            transform.update({"_target_": "Identityd", "keys": "pred"})


def _write_volume(path: Path, shape: Sequence[int], spacing: Sequence[float], seed: int) -> None:
    """A smooth random volume with a blob, in an oblique LPS-like affine (so that the grids really differ)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    blob = np.exp(-((grid - rng.uniform(-0.3, 0.3, (3, 1, 1, 1))) ** 2).sum(0) / 0.2)
    data = (200 * blob + 20 * rng.standard_normal(shape)).astype(np.float32)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    c, s = np.cos(0.2), np.sin(0.2)
    affine[:3, :3] = affine[:3, :3] @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    nib.save(nib.Nifti1Image(data, affine), str(path))


def prepare_bundle(
    name: str,
    configs: Path,
    work: Path,
    size: int = 24,
    cases: int = 2,
    network_overrides: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """A bundle folder under ``work`` with the given configs, ``cases`` synthetic volumes and random weights.

    Returns:
        the bundle folder and the command-line overrides of a run (datalist, workarounds, network overrides).
    """
    spec = BUNDLES[name]
    bundle = work / name
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(configs, bundle / "configs")
    (bundle / "models").mkdir(parents=True)
    (bundle / "data").mkdir()
    files = []
    for i in range(cases):
        case = []
        for c in range(spec.channels):
            path = bundle / "data" / f"case{i}_{c}.nii.gz"
            _write_volume(path, (size, size + 2, size - 2), spec.spacing, seed=10 * i + c)
            case.append(str(path))
        files.append(case)
    overrides = {"bundle_root": str(bundle), spec.datalist_key: spec.datalist(files), "dataloader#num_workers": 0}
    overrides.update(spec.overrides)
    overrides.update(network_overrides or {})
    parser = ConfigParser()
    parser.read_config(str(config_file(bundle / "configs")))
    raw = parser.get()
    overrides = _drop_none(raw, overrides)
    _without_skimage(raw)
    ConfigParser.export_config_file(raw, str(config_file(bundle / "configs")))  # deletions, e.g. SwinUNETR's img_size
    parser = ConfigParser(raw)
    for key, value in overrides.items():
        parser[key] = value
    if spec.write_extra is not None:
        spec.write_extra(bundle, parser.get())
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    torch.save(network.state_dict(), bundle / "models" / "model.pt")
    # before any adapter converts the normalisation layers: the names of their affine parameters
    (bundle / "models" / NORM_NAMES).write_text(json.dumps(sorted(norm_parameter_names(network))))
    return bundle, overrides


def norm_parameter_names(network: nn.Module) -> set[str]:
    """Names of the affine parameters of the normalisation layers (BatchNorm, InstanceNorm, GroupNorm, LayerNorm)."""
    types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    return {
        f"{m}.{n}" if m else n
        for m, module in network.named_modules()
        if isinstance(module, types)
        for n, _ in module.named_parameters(recurse=False)
    }


@dataclass
class RunResult:
    """What one run gave: per-case adapter statistics, changed and normalisation parameter names, masks, cost."""

    stats: list[dict[str, Any]]
    changed: set[str]
    norms: set[str]
    masks: list[Path]
    activation: str | None
    seconds: float
    rss_before_mb: float
    rss_peak_mb: float


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_bundle(
    bundle: Path,
    overrides: dict[str, Any],
    method: str = PLAIN,
    output_dir: Path | None = None,
    **inferer_kwargs: Any,
) -> RunResult:
    """Run the bundle plain (``method="plain"``) or with the overlay of ``method`` (written to ``configs/tta.json``),
    as ``python -m monai.bundle run --config_file "['configs/inference.<ext>','configs/tta.json']"`` does."""
    from ignite.engine import Events

    main = config_file(bundle / "configs")
    files = [str(main)]
    if method != PLAIN:
        parser = ConfigParser()
        parser.read_config(str(main))
        for key, value in overrides.items():
            parser[key] = value
        inferer = parser.get("inferer")
        tta = overlay(
            method,
            BUNDLES[bundle.name].activation,
            inferer["roi_size"],
            inferer.get("sw_batch_size", 1),
            inferer.get("overlap", 0.25),
            **inferer_kwargs,
        )
        (bundle / "configs" / "tta.json").write_text(json.dumps(tta, indent=4))
        files.append(str(bundle / "configs" / "tta.json"))
    out = output_dir or bundle / f"eval_{method}"
    shutil.rmtree(out, ignore_errors=True)
    workflow = ConfigWorkflow(
        config_file=files, logging_file=False, workflow_type=None, **{**overrides, "output_dir": str(out)}
    )
    workflow.initialize()
    evaluator = workflow.parser.get_parsed_content("evaluator")
    adapter = getattr(evaluator.inferer, "adapter", None)
    stats: list[dict[str, Any]] = []
    if adapter is not None:
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda _: stats.append(dict(adapter.last_stats)))
    rss_before = _rss_mb()
    start = time.perf_counter()
    workflow.run()
    seconds = time.perf_counter() - start
    workflow.finalize()
    network = evaluator.network
    saved = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    now = dict(network.named_parameters())
    changed = {n for n, p in now.items() if not torch.equal(p.detach().cpu(), saved[n])}
    return RunResult(
        stats=stats,
        changed=changed,
        norms=set(json.loads((bundle / "models" / NORM_NAMES).read_text())),
        masks=sorted(out.rglob("*.nii.gz")),
        activation=getattr(adapter, "activation", None),
        seconds=seconds,
        rss_before_mb=rss_before,
        rss_peak_mb=_rss_mb(),
    )


def same_grids(plain: Sequence[Path], adapted: Sequence[Path]) -> bool:
    """Whether the adapted run wrote one mask per plain mask, each with the same shape and affine."""
    if len(plain) != len(adapted) or not plain:
        return False
    for a, b in zip(plain, adapted):
        ia, ib = nib.load(str(a)), nib.load(str(b))
        if a.name != b.name or ia.shape != ib.shape or not np.allclose(ia.affine, ib.affine):
            return False
    return True


def main(argv: Sequence[str] | None = None) -> None:
    """One run, printed as one JSON line (run each in its own process: the peak memory is the process's)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", required=True, help="the bundle's configs folder")
    ap.add_argument("--bundle", required=True, choices=sorted(BUNDLES))
    ap.add_argument("--method", default=PLAIN, choices=[PLAIN, *METHODS])
    ap.add_argument("--work", default="/tmp/zoo_overlay", help="where the bundle folder is made")
    ap.add_argument("--size", type=int, default=32, help="side of the synthetic volumes (voxels)")
    ap.add_argument("--cases", type=int, default=2)
    ap.add_argument("--override", action="append", default=[], help="KEY=JSON, e.g. inferer#roi_size=[64,64,64]")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    extra = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.override)}
    work = Path(args.work) / args.method
    bundle, overrides = prepare_bundle(args.bundle, Path(args.configs), work, args.size, args.cases, extra)
    result = run_bundle(bundle, overrides, args.method)
    row = {
        "bundle": args.bundle,
        "method": args.method,
        "activation": result.activation,
        "cases": len(result.masks),
        "resets": [bool(s.get("reset")) for s in result.stats],
        "losses": [s.get("loss") for s in result.stats],
        "safe_choice": [s.get("safe_choice") for s in result.stats],
        "safe_step": [s.get("safe_step") for s in result.stats],
        "changed": len(result.changed),
        "only_norm": result.changed <= result.norms,
        "seconds_per_case": result.seconds / max(len(result.masks), 1),
        "rss_before_mb": round(result.rss_before_mb),
        "rss_peak_mb": round(result.rss_peak_mb),
        "masks": [str(m) for m in result.masks],
    }
    print(json.dumps(row))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
