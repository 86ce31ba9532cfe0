"""SAR: sharpness-aware and reliable entropy minimisation (Niu et al., ICLR 2023; methods spec §6.2)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.utils import look_up_option
from torch import nn

from monai_tta.adapters.base import Adapter, AdapterState
from monai_tta.adapters.cases import PartGroup
from monai_tta.adapters.settings import Setting
from monai_tta.adapters.stats import StatKeys
from monai_tta.gradients import global_cosine, perturb, restore, set_grads
from monai_tta.losses import entropy_map

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
      ``layer4``; pass ``["res.layer4"]`` for :class:`~monai_tta.networks.ResUNet`);
    - a volume adapted on patches treats each patch as a sample of the reliability filter: both gradients are the
      means over the patches that pass it, and the reported prediction is the sliding-window one after the update.

    Args:
        rho: SAM neighbourhood radius (0.05).
        margin: entropy filter; ``None`` derives it from the output channels on the first case.
        reset_threshold: model-recovery threshold on the loss EMA; ``None`` derives it likewise.
        activation: ``"sigmoid"`` or ``"softmax"``.
        exclude: module name prefixes whose parameters stay frozen.
        kwargs: :class:`~monai_tta.adapters.base.Adapter` arguments; defaults here: SGD, momentum 0.9,
            ``lr = 0.00025 / 64 * 2 * 2`` (the reference's rule at batch size 1); ``setting`` defaults to
            ``"domain"`` (the reference runs continual: ``setting="continual"``).
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
        kwargs.setdefault("setting", Setting.DOMAIN)
        kwargs.setdefault("optimizer", "sgd")
        kwargs.setdefault("lr", 0.00025 / 64 * 2 * 2)
        kwargs.setdefault("momentum", 0.9)
        super().__init__(activation=activation, **kwargs)
        if rho <= 0:
            raise ValueError(f"rho must be > 0, got {rho}.")
        self.rho, self.margin, self.reset_threshold = rho, margin, reset_threshold
        self.exclude = tuple(exclude)

    def select_params(self, network: nn.Module) -> list[nn.Parameter]:
        """The ``params`` set (default: the affine parameters of the normalisation layers) without those of the
        modules named in ``exclude``."""
        excluded = {
            id(p)
            for name, module in network.named_modules()
            if any(name == e or name.startswith(e + ".") for e in self.exclude)
            for p in module.parameters()
        }
        return [p for p in super().select_params(network) if id(p) not in excluded]

    def reset_state(self, state: AdapterState) -> None:
        state.extra.pop("ema", None)

    def _entropies(self, logits: torch.Tensor) -> torch.Tensor:
        return entropy_map(logits, self.activation).flatten(1).mean(1)

    def adapt(
        self, state: AdapterState, inputs: torch.Tensor, network: nn.Module
    ) -> tuple[dict[str, Any], torch.Tensor | None]:
        parts = self.case_parts(inputs)
        reported: list[torch.Tensor] = []
        entropies: list[torch.Tensor] = []
        kept: list[tuple[PartGroup, torch.Tensor]] = []
        limits: list[float] = []

        def first_loss(group: PartGroup) -> tuple[torch.Tensor, int] | None:
            logits = network(parts.take(inputs, group))
            if parts.whole:
                reported.append(logits.detach())
            if not limits:
                top = max_entropy(logits.shape[1], self.activation)
                limits.append(0.4 * top if self.margin is None else self.margin)
                limits.append(_RESET_RATIO * top if self.reset_threshold is None else self.reset_threshold)
            ent = self._entropies(logits)
            entropies.append(ent.detach())
            keep = ent < limits[0]
            if not bool(keep.any()):
                return None
            kept.append((group, keep))
            return ent[keep].mean(), int(keep.sum())  # weighs as many samples (patches) as it averages

        g, _, _ = parts.grads(first_loss, state.params)
        margin, threshold = limits
        logits = reported[0] if reported else None
        stats: dict[str, Any] = {StatKeys.LOSS: float(torch.cat(entropies).mean()), StatKeys.LR: self.lr}
        if g is None:
            stats[StatKeys.N_STEPS] = 0
            return stats, logits
        norm = float(torch.stack([t.pow(2).sum() for t in g]).sum().sqrt())
        theta = perturb(state.params, g, scale=self.rho / (norm + 1e-12))
        masks = iter([keep for _, keep in kept])

        def second_loss(group: PartGroup) -> tuple[torch.Tensor, int] | None:
            ent2 = self._entropies(network(parts.take(inputs, group)[next(masks)]))
            keep2 = ent2 < margin
            return (ent2[keep2].mean(), int(keep2.sum())) if bool(keep2.any()) else None

        second = parts.only([group for group, _ in kept])
        g2, loss2, used = second.grads(second_loss, state.params)
        restore(state.params, theta)
        if g2 is not None:
            set_grads(state.params, g2)
            state.optimizer.step()
            value = float(loss2)
            ema = state.extra.get("ema")
            state.extra["ema"] = value if ema is None else 0.9 * ema + 0.1 * value
            stats.update({StatKeys.PSEUDO_LOSS: value, StatKeys.COSINE: float(global_cosine(g, g2))})
            stats["ema"] = state.extra["ema"]
        stats[StatKeys.N_STEPS] = int(used > 0)
        if state.extra.get("ema") is not None and state.extra["ema"] < threshold:
            self.reset(network)
            stats["recovered"] = True
        return stats, logits
