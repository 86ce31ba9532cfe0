"""``safe``: a label-free choice, per case, of the normalisation statistics the prediction uses.

No published method has it. For each case :class:`SafeNorm` predicts with each candidate statistics (by default the
source running statistics, a half-and-half mix, and the image's own statistics) and reports the prediction whose
mean per-pixel entropy is the lowest (ties go to the earlier candidate: the source first). The idea is the one the
benchmark shows: per-image statistics fix large shifts (camera, contrast) but cost a few points where the source
statistics already fit (blur, fov), and the prediction made with statistics that fit the image is the more confident
one. Cost: one forward per candidate, no gradient, no state carried between cases (every case is chosen on its own).

Measured on the embedded data: ``docs/reliability.md``. Opt-in; the bundles keep their methods' published regimes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.utils import look_up_option
from torch import nn

from monai_tta.adapters.base import AdapterState
from monai_tta.adapters.source_only import SourceOnly
from monai_tta.keys import StatKeys

__all__ = ["SafeNorm", "mean_entropy"]

_ACTIVATIONS = ("sigmoid", "softmax")


def mean_entropy(logits: torch.Tensor, activation: str = "sigmoid") -> torch.Tensor:
    """Mean per-pixel entropy of a prediction, normalised to ``[0, 1]`` (sigmoid: per channel, base 2)."""
    z = logits.float()
    if activation == "softmax":
        p = torch.softmax(z, dim=1)
        return -(p * torch.log(p.clamp_min(1e-12))).sum(1).mean() / math.log(max(z.shape[1], 2))
    p = torch.sigmoid(z)
    h = -(p * torch.log(p.clamp_min(1e-12)) + (1 - p) * torch.log((1 - p).clamp_min(1e-12)))
    return h.mean() / math.log(2.0)


class SafeNorm(SourceOnly):
    """Per case, the prediction of lowest entropy among candidate normalisation statistics.

    Args:
        priors: the candidates, as weights on the source statistics (1: source, 0: the image's own, between: a mix).
        activation: ``"sigmoid"`` or ``"softmax"`` (how the entropy is read from the logits).
        kwargs: :class:`~monai_tta.adapters.base.Adapter` arguments.

    Raises:
        ValueError: for no candidate, a prior outside ``[0, 1]`` or an unknown activation.
    """

    requires_batch_norm = True

    def __init__(self, priors: Sequence[float] = (1.0, 0.5, 0.0), activation: str = "sigmoid", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not priors or any(not 0.0 <= float(p) <= 1.0 for p in priors):
            raise ValueError(f"priors must be a non-empty list of weights in [0, 1], got {list(priors)}.")
        self.priors = tuple(float(p) for p in priors)
        self.activation = look_up_option(activation, _ACTIVATIONS)
        self._choice: float | None = None

    def predict(self, state: AdapterState, inputs: torch.Tensor, network: nn.Module) -> torch.Tensor:
        saved = [layer.prior for layer in state.norms]
        best, best_h, choice = None, math.inf, self.priors[0]
        try:
            for prior in self.priors:
                for layer in state.norms:
                    layer.prior = prior
                logits = network(inputs)
                h = float(mean_entropy(logits, self.activation))
                if h < best_h:
                    best, best_h, choice = logits, h, prior
        finally:
            for layer, prior in zip(state.norms, saved):
                layer.prior = prior
        self._choice = choice
        return best

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        logits = super().__call__(inputs, network, *args, **kwargs)
        self.last_stats[StatKeys.SAFE_PRIOR] = self._choice
        return logits
