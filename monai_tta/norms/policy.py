"""Normalisation regimes: how the adaptive layers mix the current input's statistics with the source ones.

A :class:`NormPolicy` sets, before each case, the weight each :class:`~monai_tta.norms.layer.AdaptiveBatchNorm` puts on
the source running statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from monai.utils import StrEnum, look_up_option

from monai_tta.norms.layer import AdaptiveBatchNorm

__all__ = ["NormRegime", "NormPolicy", "warmup_lambda"]


class NormRegime(StrEnum):
    """Which statistics the normalisation layers use while adapting and predicting.

    - ``source``: the source running statistics (plain inference).
    - ``image``: the current input's own statistics (TENT/GraTa as published).
    - ``mix``: a fixed mix ``prior * source + (1 - prior) * image``.
    - ``warmup``: VPTTA's schedule, ``lambda_t = 1 / (sqrt(t) / warm_n + 1)`` on the image statistics.
    """

    SOURCE = "source"
    IMAGE = "image"
    MIX = "mix"
    WARMUP = "warmup"


def warmup_lambda(t: int, warm_n: float = 5.0) -> float:
    """VPTTA's weight on the current image statistics after ``t`` images: ``1 / (sqrt(t) / warm_n + 1)``.

    Args:
        t: number of images seen, counting the current one (``t >= 1``).
        warm_n: warm-up constant (5 in the reference).

    Raises:
        ValueError: if ``t < 1`` or ``warm_n <= 0``.
    """
    if t < 1 or warm_n <= 0:
        raise ValueError(f"warmup_lambda needs t >= 1 and warm_n > 0, got t={t}, warm_n={warm_n}.")
    return 1.0 / (math.sqrt(t) / warm_n + 1.0)


@dataclass
class NormPolicy:
    """How the adaptive BatchNorm layers mix image and source statistics.

    Args:
        regime: one of :class:`NormRegime` (``"source"``, ``"image"``, ``"mix"``, ``"warmup"``).
        prior: weight on the source statistics for ``"mix"`` (e.g. 0.1-0.25 on real scanner shifts).
        warm_n: VPTTA's warm-up constant for ``"warmup"``.

    Raises:
        ValueError: for an unknown regime or a prior outside ``[0, 1]``.
    """

    regime: str = NormRegime.IMAGE
    prior: float = 0.0
    warm_n: float = 5.0

    def __post_init__(self) -> None:
        self.regime = look_up_option(self.regime, NormRegime)
        if not 0.0 <= self.prior <= 1.0:
            raise ValueError(f"prior must be in [0, 1], got {self.prior}.")

    @classmethod
    def from_any(cls, policy: NormPolicy | str | dict | None, default: str = NormRegime.IMAGE) -> NormPolicy:
        """Build a policy from a policy, a regime name, a dict of fields or ``None`` (the default regime)."""
        if isinstance(policy, NormPolicy):
            return policy
        if policy is None:
            return cls(regime=default)
        if isinstance(policy, str):
            return cls(regime=policy)
        if isinstance(policy, dict):
            return cls(**policy)
        raise TypeError(f"norm must be a NormPolicy, a regime name or a dict, got {type(policy).__name__}.")

    def source_weight(self, t: int) -> float:
        """Weight on the source statistics for the ``t``-th image (``t >= 1``)."""
        if self.regime == NormRegime.SOURCE:
            return 1.0
        if self.regime == NormRegime.IMAGE:
            return 0.0
        if self.regime == NormRegime.MIX:
            return float(self.prior)
        return 1.0 - warmup_lambda(t, self.warm_n)

    def apply(self, layers: Sequence[AdaptiveBatchNorm], t: int = 1) -> None:
        """Configure ``layers`` for the ``t``-th image.

        A BatchNorm layer built without running statistics (``track_running_stats=False``) always normalises with
        its input's own statistics, as it does in plain inference.
        """
        prior = self.source_weight(t)
        warm = self.regime == NormRegime.WARMUP
        for layer in layers:
            own = layer.has_source_stats  # a BatchNorm without running statistics keeps its plain-inference behaviour
            layer.prior = prior if own else 0.0
            layer.unbiased = warm and own
            layer.detach_stats = warm and own
