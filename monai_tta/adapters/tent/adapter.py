"""TENT for segmentation (Wang et al., ICLR 2021), as the GraTa/VPTTA authors run it (methods spec §6.1)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from monai_tta.adapters.base import Adapter, AdapterState
from monai_tta.adapters.cases import PartGroup
from monai_tta.adapters.settings import Setting
from monai_tta.adapters.stats import StatKeys
from monai_tta.gradients import set_grads
from monai_tta.losses import entropy_loss

__all__ = ["Tent"]


class Tent(Adapter):
    """Entropy minimisation on the BatchNorm affine parameters with per-image statistics.

    Defaults follow the medical variant of the spec: sigmoid entropy ``-sum_c p_c log p_c``, Adam lr 1e-4, the affine
    parameters of the normalisation layers (``params="norm"``: on a BatchNorm network exactly TENT's BN affine set),
    per-image statistics, one step per case. The published protocol is continual (``setting="continual"``); our
    default is ``"domain"``, which without a domain signal adapts each case from the source model (per patient).
    The reference returns the forward made *before* the update.
    A volume adapted on patches takes one step on the mean entropy gradient of its patches and reports the
    sliding-window prediction made after the update (our choice: a pre-update prediction would need one more pass).

    Args:
        activation: ``"sigmoid"`` (multi-label heads; the default, as the GraTa/VPTTA authors run TENT) or
            ``"softmax"`` (exclusive classes, background included: categorical entropy, as in TENT's paper).
        predict_after_update: report a fresh forward after the update instead of the reference's pre-update forward.
        kwargs: :class:`~monai_tta.adapters.base.Adapter` arguments (``lr`` defaults to 1e-4, ``setting`` to
            ``"domain"``).
    """

    def __init__(self, activation: str = "sigmoid", predict_after_update: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("setting", Setting.DOMAIN)
        kwargs.setdefault("lr", 1e-4)
        super().__init__(activation=activation, **kwargs)
        self.predict_after_update = predict_after_update

    def adapt(
        self, state: AdapterState, inputs: torch.Tensor, network: nn.Module
    ) -> tuple[dict[str, Any], torch.Tensor | None]:
        parts = self.case_parts(inputs)
        forwards: list[torch.Tensor] = []

        def loss_fn(group: PartGroup) -> torch.Tensor:
            logits = network(parts.take(inputs, group))
            if parts.whole:
                forwards.append(logits.detach())
            return entropy_loss(logits, self.activation)

        grads, loss, _ = parts.grads(loss_fn, state.params)
        set_grads(state.params, grads)
        state.optimizer.step()
        reported = None if self.predict_after_update or not parts.whole else forwards[0]
        return {StatKeys.LOSS: float(loss), StatKeys.LR: self.lr}, reported
