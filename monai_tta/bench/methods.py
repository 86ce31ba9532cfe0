"""The benchmark's methods: each is a bundle's adapter block, read from the bundle, with overrides for its variants.

The hyper-parameters live in the bundles only (``bundles/<method>_<family>_segmentation``: the ``inferer`` block of
the fundus family, the ``adapter`` block inside the sliding-window ``inferer`` of the prostate MR family). A method
of the registry names the bundle it reads and what it changes (the variants: another regime, the safeguard, the safe
choice, another GraTa view mode); the few methods without a bundle of their own (``norm_adapt``, ``norm_mix``,
``safe_norm``, ``sar``) replace the block by their class at its defaults. The setting and the seed are the bundle's
``setting`` and ``seed``; ``safe`` is off unless a variant asks for it (the published methods).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

from monai_tta.adapters.settings import Setting

__all__ = [
    "STREAM",
    "SETTINGS",
    "REFERENCE",
    "DEFAULT_METHODS",
    "BUNDLES",
    "FAMILIES",
    "MethodSpec",
    "METHODS",
    "available_methods",
    "bundle_of",
    "method_parser",
    "make_adapter",
]

#: the multi-round continual stream (a setting name of the benchmark, not of the adapters).
STREAM = "stream"
#: settings of the benchmark: the adapters' three, and the multi-round continual stream.
SETTINGS = (Setting.EPISODIC.value, Setting.DOMAIN.value, Setting.CONTINUAL.value, STREAM)
#: the method every cost ratio divides by.
REFERENCE = "source_only"
#: the methods of a run when ``--methods`` is not given.
DEFAULT_METHODS = ("source_only", "norm_adapt", "tent", "grata", "grata_approx", "vptta")
#: the bundles folder.
BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
#: spatial dimensions -> (bundle family, key of the adapter block in its configs).
FAMILIES = {2: ("fundus", "inferer"), 3: ("prostate_mr", "adapter")}


@dataclass(frozen=True)
class MethodSpec:
    """A method of the benchmark.

    Attributes:
        bundle: the method whose bundle gives the adapter block (``<bundle>_<family>_segmentation``).
        overrides: keys of the block to change (merged into it).
        block: a whole block replacing the bundle's (a class without a bundle, at its defaults).
        description: one line for the report.
    """

    bundle: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    block: Mapping[str, Any] | None = None
    description: str = ""


def _own(cls: str, **options: Any) -> dict[str, Any]:
    return {"_target_": f"monai_tta.adapters.{cls}", "setting": "@setting", "seed": "@seed", **options}


_SAFE = {"safe": "@safe"}
METHODS: dict[str, MethodSpec] = {
    "source_only": MethodSpec("source_only", description="source model, source BatchNorm statistics"),
    "norm_adapt": MethodSpec("source_only", block=_own("NormAdapt", **_SAFE), description="per-image BN statistics"),
    "norm_mix": MethodSpec(
        "source_only", block=_own("NormAdapt", norm={"regime": "mix", "prior": 0.5}), description="BN half source"
    ),
    "safe_norm": MethodSpec("source_only", block=_own("SafeNorm"), description="label-free choice of 3 BN regimes"),
    "safe_norm_domain": MethodSpec("source_only", block=_own("SafeNorm", per="domain"), description="per domain"),
    "tent": MethodSpec("tent", description="TENT: entropy, BN affine, 1 fwd + 1 bwd"),
    "sar": MethodSpec("tent", block=_own("SAR", **_SAFE), description="SAR: reliable entropy, SAM, recovery"),
    "grata": MethodSpec("grata", description="GraTa exact (the published update), 9 fwd + 2 bwd"),
    "grata_eager": MethodSpec("grata", {"cuda_graph": False}, description="GraTa exact without CUDA graphs"),
    "grata_batched": MethodSpec(
        "grata", {"view_mode": "batched", "view_chunk": None}, description="GraTa exact, 6 views in one forward"
    ),
    "grata_separate": MethodSpec(
        "grata", {"view_mode": "separate", "cuda_graph": False}, description="GraTa exact, one forward per view"
    ),
    "grata_joint": MethodSpec("grata", {"view_mode": "joint"}, description="GraTa exact, views + strong in one"),
    "grata_approx": MethodSpec(
        "grata", {"mode": "approximate"}, description="GraTa approximate (NOT the published algorithm)"
    ),
    "grata_approx_nosafeguard": MethodSpec(
        "grata", {"mode": "approximate", "safeguard": False}, description="GraTa approximate, no safeguard"
    ),
    "vptta": MethodSpec("vptta", description="VPTTA: Fourier prompt + memory bank, frozen network"),
}
"""Registry of the benchmark's methods, name -> :class:`MethodSpec`."""

_VARIANTS: dict[str, dict[str, Any]] = {
    "nosafeguard": {"safeguard": False},
    "safeguard": {"safeguard": True},
    "safe": {"safe": "case"},
    "safe_domain": {"safe": "domain"},
    "safe_entropy": {"safe": {"signal": "entropy"}},
    "safe_flip": {"safe": {"signal": "flip"}},
    "safe_consensus": {"safe": {"signal": "consensus"}},
    "safe_agree_source": {"safe": {"signal": "source"}},
    "safe_mixes": {"safe": {"signal": "mixes"}},
    "gap0": {"safeguard": {"source_gap": 0.0}},
    "probe": {"safeguard": {"source_gap": 1.0}},
    "source_stats": {"norm": "source", "safeguard": False},
    "mix_stats": {"norm": {"regime": "mix", "prior": 0.5}, "safeguard": False},
}
# the variants of each method: not a regime that defines it, its default already, or nothing to measure
# the signals of safe, measured on TENT (issue 18)
_SIGNALS = ("safe_entropy", "safe_flip", "safe_consensus", "safe_agree_source", "safe_mixes")
_GRADIENT = tuple(v for v in _VARIANTS if v != "safeguard" and v not in _SIGNALS)
_HAS = {"source_only": ("safeguard", "safe", "safe_domain"), "tent": (*_GRADIENT, *_SIGNALS), "grata": _GRADIENT}
_HAS.update(sar=_GRADIENT, norm_adapt=_HAS["source_only"], vptta=("nosafeguard", "safe", "safe_domain"))
for _base, _suffixes in _HAS.items():
    _spec = METHODS[_base]
    for _suffix in _suffixes:
        _options = _VARIANTS[_suffix]
        _block = None if _spec.block is None else {**_spec.block, **_options}
        _desc = f"{_base} with {_options}"
        METHODS.setdefault(
            f"{_base}_{_suffix}", MethodSpec(_spec.bundle, {**_spec.overrides, **_options}, _block, _desc)
        )


def bundle_of(name: str, dims: int = 2) -> Path:
    """The bundle folder whose configs method ``name`` reads (``dims``: 2 fundus images, 3 MR volumes).

    Raises:
        ValueError: for an unknown method, or one whose bundle does not exist for ``dims``.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {list(METHODS)}.")
    path = BUNDLES / f"{METHODS[name].bundle}_{FAMILIES[dims][0]}_segmentation"
    if not path.is_dir():
        raise ValueError(f"method {name!r} reads bundle {path.name}, which does not exist: not available in {dims}D.")
    return path


def method_parser(
    name: str, setting: str, dims: int = 2, overrides: Mapping[str, Any] | None = None, seed: int = 0
) -> ConfigParser:
    """A ``ConfigParser`` of method ``name``'s bundle (``inference.json`` + ``evaluate.json``) with the setting, the
    seed and the method's variant applied (``stream`` runs ``continual``), and ``overrides`` (e.g. the data, the
    network, ``image_size``, ``inferer#roi_size``) on top.

    Raises:
        ValueError: for an unknown method or setting.
    """
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; available: {list(SETTINGS)}.")
    bundle, spec, key = bundle_of(name, dims), METHODS[name], FAMILIES[dims][1]
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / f) for f in ("inference.json", "evaluate.json")])
    parser.update({"bundle_root": str(bundle), "seed": int(seed), "safe": None})
    parser["setting"] = Setting.CONTINUAL.value if setting == STREAM else setting
    if spec.block is not None:
        parser[key] = dict(spec.block)
    for option, value in {"setting": "@setting", **spec.overrides}.items():
        parser[f"{key}#{option}"] = value
    parser.update(dict(overrides or {}))
    return parser


def available_methods(dims: int = 2) -> list[str]:
    """Names of :data:`METHODS` whose bundle exists for ``dims``."""
    return [m for m in METHODS if (BUNDLES / f"{METHODS[m].bundle}_{FAMILIES[dims][0]}_segmentation").is_dir()]


def make_adapter(
    name: str, setting: str, image_size: int, seed: int = 0, window: Mapping[str, Any] | None = None
) -> Any:
    """The adapter of method ``name`` as its bundle builds it, for a benchmark ``setting``: a 2D adapter for images of
    side ``image_size`` (VPTTA's prompt), or with ``window`` (options of the 3D bundle's sliding-window ``inferer``
    over the bundle's) the 3D bundle's adapter wrapped in its sliding window.

    Raises:
        ValueError: for an unknown method or setting.
    """
    overrides = {"image_size": int(image_size)} if window is None else {f"inferer#{k}": v for k, v in window.items()}
    return method_parser(name, setting, 2 if window is None else 3, overrides, seed).get_parsed_content("inferer")
