"""Which parameters an adapter updates: one shared, validated option for every method and every network.

``params`` (an :class:`~monai_tta.adapters.base.Adapter` argument) is one of

- ``"norm"``: the affine parameters (``weight`` and ``bias``) of every normalisation layer: BatchNorm 1d/2d/3d,
  SyncBatchNorm (also once converted to :class:`~monai_tta.norms.AdaptiveBatchNorm`), InstanceNorm with
  ``affine=True``, GroupNorm and LayerNorm (including MONAI's ``LayerNorm`` subclasses). On a network whose only
  normalisation layers are BatchNorm this is exactly ``"bn"``;
- ``"bn"``: the affine parameters of the BatchNorm layers only (the set TENT and GraTa publish for BN networks);
- ``"all"``: every parameter of the network;
- a callable ``network -> iterable of parameters`` chosen by the user.

Parameters are returned in module order, ``weight`` before ``bias``, each once (shared modules are not repeated).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from monai.utils import look_up_option
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from monai_tta.norms import AdaptiveBatchNorm

__all__ = [
    "PARAM_SETS",
    "ParamSelection",
    "select_parameters",
    "norm_affine_params",
    "norm_layer_kinds",
    "nothing_to_update_message",
]

#: the named parameter sets (see the module docstring).
PARAM_SETS = ("norm", "bn", "all")

#: a parameter set: a name of :data:`PARAM_SETS` or a callable ``network -> parameters``.
ParamSelection = str | Callable[[nn.Module], Iterable[nn.Parameter]]

_BATCH_NORMS = (_BatchNorm, AdaptiveBatchNorm)
_OTHER_NORMS = (_InstanceNorm, nn.GroupNorm, nn.LayerNorm)


def _affine(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    params: list[nn.Parameter] = []
    seen: set[int] = set()
    for m in modules:
        for p in (getattr(m, "weight", None), getattr(m, "bias", None)):
            if isinstance(p, nn.Parameter) and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def norm_affine_params(network: nn.Module, batch_norm_only: bool = False) -> list[nn.Parameter]:
    """The affine parameters of the normalisation layers of ``network``, in module order.

    Args:
        network: the network.
        batch_norm_only: only BatchNorm (and SyncBatchNorm, converted or not) layers.
    """
    kinds = _BATCH_NORMS if batch_norm_only else _BATCH_NORMS + _OTHER_NORMS
    return _affine(m for m in network.modules() if isinstance(m, kinds))


def select_parameters(network: nn.Module, params: ParamSelection = "norm") -> list[nn.Parameter]:
    """The parameters of ``network`` in the set ``params`` (see the module docstring), each once.

    Args:
        network: the network.
        params: ``"norm"``, ``"bn"``, ``"all"`` or a callable ``network -> parameters``.

    Raises:
        ValueError: for an unknown set name.
        TypeError: if the callable returns something other than parameters.
    """
    if callable(params):
        chosen = list(params(network))
        if not all(isinstance(p, nn.Parameter) for p in chosen):
            raise TypeError("the params callable must return torch.nn.Parameter objects of the network.")
        unique: dict[int, nn.Parameter] = {}
        for p in chosen:
            unique.setdefault(id(p), p)
        return list(unique.values())
    name = look_up_option(params, PARAM_SETS)
    if name == "all":
        return list(network.parameters())
    return norm_affine_params(network, batch_norm_only=name == "bn")


def norm_layer_kinds(network: nn.Module) -> list[str]:
    """Sorted class names of the normalisation layers of ``network`` (affine or not), e.g. for error messages."""
    kinds = _BATCH_NORMS + _OTHER_NORMS
    return sorted({type(m).__name__ for m in network.modules() if isinstance(m, kinds)})


def nothing_to_update_message(method: str, network: nn.Module, params: ParamSelection | None) -> str:
    """The error text for a network on which the parameter set of ``method`` is empty: names the network, its
    normalisation layers and the three ways out."""
    kinds = ", ".join(norm_layer_kinds(network)) or "none"
    chosen = getattr(params, "__name__", repr(params)) if params is not None else "its default"
    return (
        f"{method} has nothing to update on {type(network).__name__} with params={chosen}: the network has no "
        f"normalisation layer with affine parameters in that set (its normalisation layers: {kinds}). Fix it with one "
        f"of: build the network with affine normalisation (for MONAI's UNet: norm=('instance', {{'affine': True}}) "
        f"or norm='batch'); pass params='all' (every parameter); or pass params=<callable network -> parameters>."
    )
