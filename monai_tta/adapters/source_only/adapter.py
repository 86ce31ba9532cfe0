"""Baselines without gradient: plain source inference, and per-image normalisation statistics."""

from __future__ import annotations

from typing import Any

from torch import nn

from monai_tta.adapters.base import Adapter
from monai_tta.adapters.settings import Setting
from monai_tta.norms.policy import NormRegime

__all__ = ["SourceOnly", "NormAdapt"]


class SourceOnly(Adapter):
    """Plain inference with the source model (source running statistics, no update)."""

    default_norm = NormRegime.SOURCE
    uses_optimizer = False
    plain_prediction = True

    def __init__(self, norm: Any = None, **kwargs: Any) -> None:
        if kwargs.get("params") is not None:
            raise ValueError(f"{type(self).__name__} updates no parameter; do not pass params.")
        kwargs.setdefault("setting", Setting.CONTINUAL)
        super().__init__(norm=norm, steps=0, **kwargs)

    def select_params(self, network: nn.Module) -> list[nn.Parameter]:
        return []


class NormAdapt(SourceOnly):
    """Normalisation adaptation: BatchNorm uses the current image's statistics (or a mix with the source), no gradient.

    Args:
        norm: regime; default ``"image"`` (per-image statistics); ``{"regime": "mix", "prior": 0.2}`` keeps
            a source prior.
        kwargs: :class:`~monai_tta.adapters.base.Adapter` arguments.

    Raises:
        ValueError: on the first call, for a network without BatchNorm running statistics (nothing to adapt).
    """

    default_norm = NormRegime.IMAGE
    requires_batch_norm = True
