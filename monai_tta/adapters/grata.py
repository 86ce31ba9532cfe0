"""GraTa: gradient alignment with a cosine-based dynamic learning rate (Chen et al., AAAI 2025; methods spec §2)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.utils import look_up_option
from torch import nn

from monai_tta.adapters.base import Adapter, AdapterState, set_lr
from monai_tta.gradients import global_cosine, param_grads, perturb, restore, set_grads
from monai_tta.keys import Setting, StatKeys
from monai_tta.losses import consistency_loss, entropy_loss
from monai_tta.norms import AdaptiveBatchNorm, per_sample_stats
from monai_tta.transforms.intensity import StrongStyle
from monai_tta.transforms.spatial import FLIP_ROT_VIEWS, apply_view, invert_view, views_preserve_shape

__all__ = ["GraTa", "cosine_lr"]

_VIEW_MODES = ("batched", "separate")


def cosine_lr(base_lr: float, cosine: float) -> float:
    """GraTa's dynamic learning rate ``base_lr * (cos + 1)^2 / 4`` (0 at cos = -1, base_lr / 4 at 0, base_lr at 1)."""
    return base_lr * (cosine + 1.0) ** 2 / 4.0


class GraTa(Adapter):
    """Gradient-alignment test-time adaptation.

    For each case ``x`` (one update):

    1. ``g_aux = grad L_ent(theta; x)`` (sigmoid entropy).
    2. ``theta' = theta - g_aux`` (the raw gradient: no learning rate).
    3. At ``theta'``: soft pseudo-label = mean sigmoid of the 6 flip/rotation views (logits inverse-mapped first),
       ``g_pse = grad BCEWithLogits(f(strong(x)), pseudo)`` at ``theta'``.
    4. ``cos`` = one cosine over all updated parameters flattened together.
    5. Restore ``theta``, set the lr to ``base * (cos + 1)^2 / 4``, one optimizer step with ``g_pse``.
    6. Predict with the updated weights.

    Defaults are the reference's: BatchNorm affine parameters, per-image statistics, Adam lr 1e-4 betas (0.9, 0.999),
    reset at each domain change (continual within a domain).

    Args:
        strong_augment: callable on a ``(B, C, H, W)`` tensor giving the strong view; default :class:`StrongStyle`
            drawing from the adapter's seeded generator. A callable that accepts ``generator=`` receives it.
        views: names of the pseudo-label views (default the six of the reference).
        view_mode: ``"batched"`` runs the views as one batched forward with per-sample statistics (same result as
            separate forwards, faster), ``"separate"`` runs one forward per view as the reference does. Non-square
            inputs always use separate forwards.
        kwargs: :class:`~monai_tta.adapters.base.Adapter` arguments.

    Raises:
        ValueError: for an unknown view mode or view name.
    """

    def __init__(
        self,
        strong_augment: Callable[..., torch.Tensor] | None = None,
        views: tuple[str, ...] = FLIP_ROT_VIEWS,
        view_mode: str = "batched",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("setting", Setting.DOMAIN)
        kwargs.setdefault("lr", 1e-4)
        super().__init__(**kwargs)
        for view in views:
            apply_view(torch.zeros(1, 1), view)
        self.views = tuple(views)
        self.view_mode = look_up_option(view_mode, _VIEW_MODES)
        self.strong_augment = strong_augment if strong_augment is not None else StrongStyle()

    def _strong(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.strong_augment, StrongStyle):
            return self.strong_augment(x, generator=self.generator)
        return self.strong_augment(x)

    def pseudo_label(self, inputs: torch.Tensor, network: nn.Module, norms: list[AdaptiveBatchNorm]) -> torch.Tensor:
        """Soft pseudo-label: mean over the views of ``sigmoid(inverse_view(f(view(x))))``, without gradient.

        A single square image runs all views as one batch with per-sample statistics (identical to one forward per
        view); a batch of several images is one case whose statistics are shared, so its views run separately.
        """
        with torch.no_grad():
            batched = self.view_mode == "batched" and inputs.shape[0] == 1 and views_preserve_shape(inputs)
            if batched:
                with per_sample_stats(norms):
                    logits = network(torch.cat([apply_view(inputs, v) for v in self.views])).split(1)
            else:
                logits = [network(apply_view(inputs, v)) for v in self.views]
            return torch.stack([torch.sigmoid(invert_view(z, v)) for z, v in zip(logits, self.views)]).mean(0)

    def adapt(
        self, state: AdapterState, inputs: torch.Tensor, network: nn.Module
    ) -> tuple[dict[str, Any], torch.Tensor | None]:
        params = state.params
        aux_loss = entropy_loss(network(inputs))
        g_aux = param_grads(aux_loss, params)
        theta = perturb(params, g_aux, scale=-1.0)
        pseudo = self.pseudo_label(inputs, network, state.norms)
        pse_loss = consistency_loss(network(self._strong(inputs)), pseudo)
        g_pse = param_grads(pse_loss, params)
        cosine = float(global_cosine(g_aux, g_pse))
        restore(params, theta)
        lr = cosine_lr(self.lr, cosine)
        set_lr(state.optimizer, lr)
        set_grads(params, g_pse)
        state.optimizer.step()
        stats = {
            StatKeys.AUX_LOSS: float(aux_loss.detach()),
            StatKeys.PSEUDO_LOSS: float(pse_loss.detach()),
            StatKeys.LOSS: float(pse_loss.detach()),
            StatKeys.COSINE: cosine,
            StatKeys.LR: lr,
        }
        return stats, None
