"""The benchmark's methods and settings: a registry of adapter factories, and the reference method of every ratio."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from monai_tta.adapters import SAR, GraTa, NormAdapt, SafeNorm, SourceOnly, Tent
from monai_tta.adapters.base import Adapter
from monai_tta.adapters.settings import Setting

__all__ = [
    "STREAM",
    "SETTINGS",
    "REFERENCE",
    "DEFAULT_METHODS",
    "MethodSpec",
    "METHODS",
    "available_methods",
    "make_adapter",
]

#: the 3-round continual stream (a setting name of the benchmark, not of the adapters).
STREAM = "stream"
#: settings of the benchmark: the adapters' three, and the multi-round continual stream.
SETTINGS = (Setting.EPISODIC.value, Setting.DOMAIN.value, Setting.CONTINUAL.value, STREAM)
#: the method every cost ratio divides by.
REFERENCE = "source_only"
#: the methods of a run when ``--methods`` is not given (those that can be built here).
DEFAULT_METHODS = ("source_only", "norm_adapt", "tent", "grata", "grata_approx", "vptta")


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
    from monai_tta.adapters.vptta.adapter import VPTTA  # optional: the benchmark runs without it

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
    "grata_approx_nosafeguard": MethodSpec(
        lambda s, i, r: GraTa(setting=s, seed=r, mode="approximate", safeguard=False),
        "GraTa approximate without the collapse safeguard (no source-gap probe)",
    ),
    "vptta": MethodSpec(_vptta, "VPTTA: Fourier prompt + memory bank, warm-up BN statistics, frozen network"),
    "norm_mix": MethodSpec(
        lambda s, i, r: NormAdapt(setting=s, seed=r, norm={"regime": "mix", "prior": 0.5}),
        "BatchNorm statistics half source, half image, no gradient step",
    ),
    "safe_norm": MethodSpec(
        lambda s, i, r: SafeNorm(setting=s, seed=r),
        "safe: per case, the lowest-entropy prediction of source / mix / image statistics (3 forwards)",
    ),
    "safe_norm_domain": MethodSpec(
        lambda s, i, r: SafeNorm(setting=s, seed=r, per="domain"),
        "safe per domain: the statistics of lowest mean entropy over the domain's cases so far (3 forwards)",
    ),
    "sar": MethodSpec(lambda s, i, r: SAR(setting=s, seed=r), "SAR: reliable entropy, SAM step, model recovery (SGD)"),
}
"""Registry of the benchmark's methods, name -> :class:`MethodSpec`."""

_REGIMES = {"source": "source", "mix": {"regime": "mix", "prior": 0.5}}
_VARIANTS = {
    "nosafeguard": ({"safeguard": False}, "without the collapse safeguard"),
    "safeguard": ({"safeguard": True}, "with the collapse safeguard (source gap included)"),
    "safe": ({"safe": "case"}, "with safe per case (method / source, mix, image statistics / source model)"),
    "safe_domain": ({"safe": "domain"}, "with safe per domain"),
    "gap0": (
        {"safeguard": {"source_gap": 0.0}},
        "with the source gap's margin at 0 instead of -0.01 (falls back only when the source is more confident)",
    ),
    "probe": (
        {"safeguard": {"source_gap": 1.0}},
        "with the source-gap probe on every case but a margin it cannot reach (the probe's cost, never a fallback)",
    ),
    **{
        f"{name}_stats": (
            {"norm": regime, "safeguard": False},
            f"in the fixed {name} statistics regime ({regime}), without the safeguard",
        )
        for name, regime in _REGIMES.items()
    },
}
_BASES = {"source_only": SourceOnly, "norm_adapt": NormAdapt, "tent": Tent, "grata": GraTa, "sar": SAR}


def _variant(cls: type[Adapter], options: Mapping[str, Any]) -> Callable[[str, int, int], Adapter]:
    return lambda s, i, r: cls(setting=s, seed=r, **dict(options))


def _vptta_variant(options: Mapping[str, Any]) -> Callable[[str, int, int], Adapter]:
    def factory(setting: str, image_size: int, seed: int) -> Adapter:
        from monai_tta.adapters.vptta.adapter import VPTTA

        return VPTTA(image_size=image_size, setting=setting, seed=seed, **dict(options))

    return factory


# every method with and without the safeguard, with safe per case and per domain, and in each fixed statistics regime
# (``<method>_<variant>``; the regimes only for the methods that keep their weights' statistics choice free)
for _base, _cls in _BASES.items():
    for _suffix, (_options, _text) in _VARIANTS.items():
        gradient_free = _base in ("source_only", "norm_adapt")
        if _suffix.endswith("_stats") and gradient_free:
            continue  # their regime is their definition: source_only, norm_mix, norm_adapt
        if _suffix == ("nosafeguard" if gradient_free else "safeguard") or (
            _suffix in ("probe", "gap0") and gradient_free
        ):
            continue  # their default already, or nothing to measure
        METHODS.setdefault(f"{_base}_{_suffix}", MethodSpec(_variant(_cls, _options), f"{_base} {_text}"))
for _suffix in ("nosafeguard", "safe", "safe_domain"):
    METHODS[f"vptta_{_suffix}"] = MethodSpec(_vptta_variant(_VARIANTS[_suffix][0]), f"vptta {_VARIANTS[_suffix][1]}")


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


def make_adapter(
    name: str, setting: str, image_size: int, seed: int = 0, window: Mapping[str, Any] | None = None
) -> Adapter:
    """Build the adapter of method ``name`` for a benchmark ``setting`` (``stream`` is a continual run).

    Args:
        name: a key of :data:`METHODS`.
        setting: one of :data:`SETTINGS`.
        image_size: side of the images the adapter sees (VPTTA's prompt is sized by it).
        seed: the adapter's seed.
        window: for volumes, the options of :class:`monai_tta.inferers.SlidingWindowAdapter` (``roi_size``,
            ``sw_batch_size``, ``overlap``, ``mode``, ...): the adapter is wrapped in it, so that one call adapts on
            the volume's patches and predicts the whole volume with MONAI's sliding window. ``None``: whole inputs.

    Raises:
        ValueError: for an unknown method or setting.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {list(METHODS)}.")
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; available: {list(SETTINGS)}.")
    adapter = METHODS[name].factory(Setting.CONTINUAL.value if setting == STREAM else setting, image_size, seed)
    if window is None:
        return adapter
    from monai_tta.inferers import SlidingWindowAdapter

    return SlidingWindowAdapter(adapter, **dict(window))
