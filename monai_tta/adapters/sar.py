"""SAR: sharpness-aware and reliable entropy minimisation (Niu et al., ICLR 2023; methods spec §6.2)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.utils import look_up_option
from torch import nn

from monai_tta.adapters.base import Adapter, AdapterState
from monai_tta.gradients import global_cosine, param_grads, perturb, restore, set_grads
from monai_tta.keys import Setting, StatKeys
from monai_tta.losses import entropy_map
from monai_tta.norms import AdaptiveBatchNorm

__all__ = ["SAR", "max_entropy"]

_ACTIVATIONS = ("sigmoid", "softmax")
#: the reference's reset threshold (0.2) relative to its maximum entropy (ln 1000, ImageNet).
_RESET_RATIO = 0.2 / math.log(1000.0)


def max_entropy(channels: int, activation: str = "sigmoid") -> float:
    """Largest value of :func:`~monai_tta.losses.entropy_loss`: ``channels / e`` (sigmoid ``-p log p`` terms) or
    ``ln(channels)`` (softmax)."""
    activation = look_up_option(activation, _ACTIVATIONS)
    return channels / math.e if activation == "sigmoid" else math.log(channels)


class SAR(Adapter):
    """Entropy minimisation with reliable-sample filtering, a sharpness-aware (SAM) step and model recovery.

    For each case: per-sample mean entropy ``H`` of the current prediction; samples with ``H >= margin`` are dropped
    (no update if none is left); ``g = grad mean H``; ascent ``theta + rho g / |g|``; the entropy is recomputed there
    and filtered again; its gradient, applied at ``theta`` by SGD (momentum 0.9), is the update. An exponential moving
    average (0.9) of the second loss below ``reset_threshold`` resets the model to the source. The reported prediction
    is the forward made before the update, as in the reference.

    Deliberate adaptations of the classification reference to sigmoid segmentation (ours):

    - the entropy is the per-pixel entropy of :func:`~monai_tta.losses.entropy_loss` averaged per sample;
    - ``margin`` defaults to ``0.4 x`` the entropy's maximum (the reference's ``0.4 ln C`` rule), i.e.
      ``0.4 C / e`` for sigmoid outputs;
    - ``reset_threshold`` defaults to the reference's 0.2 scaled by the same maximum (``0.2 / ln 1000``);
    - ``exclude`` names the module prefixes whose norm layers are not adapted (the reference drops ResNet's
      ``layer4``; pass ``["res.layer4"]`` for :class:`~monai_tta.networks.ResUNet`).

    Args:
        rho: SAM neighbourhood radius (0.05).
        margin: entropy filter; ``None`` derives it from the output channels on the first case.
        reset_threshold: model-recovery threshold on the loss EMA; ``None`` derives it likewise.
        activation: ``"sigmoid"`` or ``"softmax"``.
        exclude: module name prefixes whose BatchNorm parameters stay frozen.
        kwargs: :class:`~monai_tta.adapters.base.Adapter` arguments; defaults here: SGD, momentum 0.9,
            ``lr = 0.00025 / 64 * 2 * 2`` (the reference's rule at batch size 1), continual.
    """

    def __init__(
        self,
        rho: float = 0.05,
        margin: float | None = None,
        reset_threshold: float | None = None,
        activation: str = "sigmoid",
        exclude: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("setting", Setting.CONTINUAL)
        kwargs.setdefault("optimizer", "sgd")
        kwargs.setdefault("lr", 0.00025 / 64 * 2 * 2)
        kwargs.setdefault("momentum", 0.9)
        super().__init__(**kwargs)
        if rho <= 0:
            raise ValueError(f"rho must be > 0, got {rho}.")
        self.rho, self.margin, self.reset_threshold = rho, margin, reset_threshold
        self.activation = look_up_option(activation, _ACTIVATIONS)
        self.exclude = tuple(exclude)

    def select_params(self, network: nn.Module) -> list[nn.Parameter]:
        params = []
        for name, module in network.named_modules():
            if isinstance(module, (nn.modules.batchnorm._BatchNorm, AdaptiveBatchNorm)):
                if not any(name == p or name.startswith(p + ".") for p in self.exclude):
                    params.extend(p for p in (module.weight, module.bias) if p is not None)
        return params

    def reset_state(self, state: AdapterState) -> None:
        state.extra.pop("ema", None)

    def _entropies(self, logits: torch.Tensor) -> torch.Tensor:
        return entropy_map(logits, self.activation).flatten(1).mean(1)

    def adapt(
        self, state: AdapterState, inputs: torch.Tensor, network: nn.Module
    ) -> tuple[dict[str, Any], torch.Tensor | None]:
        logits = network(inputs)
        top = max_entropy(logits.shape[1], self.activation)
        margin = 0.4 * top if self.margin is None else self.margin
        threshold = _RESET_RATIO * top if self.reset_threshold is None else self.reset_threshold
        ent = self._entropies(logits)
        keep = ent < margin
        stats: dict[str, Any] = {StatKeys.LOSS: float(ent.mean().detach()), StatKeys.LR: self.lr}
        if not bool(keep.any()):
            stats[StatKeys.N_STEPS] = 0
            return stats, logits.detach()
        g = param_grads(ent[keep].mean(), state.params)
        norm = float(torch.stack([t.pow(2).sum() for t in g]).sum().sqrt())
        theta = perturb(state.params, g, scale=self.rho / (norm + 1e-12))
        ent2 = self._entropies(network(inputs[keep]))
        keep2 = ent2 < margin
        if bool(keep2.any()):
            loss2 = ent2[keep2].mean()
            g2 = param_grads(loss2, state.params)
            restore(state.params, theta)
            set_grads(state.params, g2)
            state.optimizer.step()
            value = float(loss2.detach())
            ema = state.extra.get("ema")
            state.extra["ema"] = value if ema is None else 0.9 * ema + 0.1 * value
            stats.update({StatKeys.PSEUDO_LOSS: value, StatKeys.COSINE: float(global_cosine(g, g2))})
            stats["ema"] = state.extra["ema"]
        else:
            restore(state.params, theta)
        stats[StatKeys.N_STEPS] = int(keep2.any())
        if state.extra.get("ema") is not None and state.extra["ema"] < threshold:
            self.reset(network)
            stats["recovered"] = True
        return stats, logits.detach()
