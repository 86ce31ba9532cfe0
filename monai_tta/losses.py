"""Losses shared by the adaptation methods and the source training."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.utils import look_up_option
from torch import nn

__all__ = ["entropy_loss", "consistency_loss", "DiceBCELoss", "dice_bce_loss"]

_ACTIVATIONS = ("sigmoid", "softmax")


def entropy_loss(logits: torch.Tensor, activation: str = "sigmoid", eps: float = 1e-6) -> torch.Tensor:
    """Mean pixel entropy ``mean_{b, spatial} [ -sum_c p_c log(p_c + eps) ]`` (GraTa's auxiliary loss, TENT's loss).

    For ``"sigmoid"`` (multi-label, as GraTa and the VPTTA authors' TENT) only the ``p log p`` term of each channel is
    used, not ``(1 - p) log(1 - p)``; for ``"softmax"`` it is the usual categorical entropy.

    Args:
        logits: ``(B, C, *spatial)`` logits.
        activation: ``"sigmoid"`` or ``"softmax"``.
        eps: added inside the log.

    Raises:
        ValueError: for an unknown activation or an input with fewer than 2 dimensions.
    """
    activation = look_up_option(activation, _ACTIVATIONS)
    if logits.dim() < 2:
        raise ValueError(f"logits must be (B, C, ...), got shape {tuple(logits.shape)}.")
    p = torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, dim=1)
    return -(p * torch.log(p + eps)).sum(dim=1).mean()


def consistency_loss(logits: torch.Tensor, soft_target: torch.Tensor) -> torch.Tensor:
    """GraTa's pseudo loss: binary cross-entropy with logits against a soft target in ``[0, 1]``, mean over all
    elements.

    Args:
        logits: ``(B, C, *spatial)`` logits of the strong view.
        soft_target: pseudo-label of the same shape.

    Raises:
        ValueError: if the shapes differ.
    """
    if logits.shape != soft_target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(soft_target.shape)} differ in shape.")
    return F.binary_cross_entropy_with_logits(logits, soft_target)


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Source-training loss of the reference: ``BCE(p, y) + 1 - (2 sum(p y) + s) / (sum(p) + sum(y) + s)``.

    The Dice term is computed over the whole batch and all channels flattened together, as in the reference.

    Args:
        logits: ``(B, C, *spatial)`` logits.
        target: binary target of the same shape.
        smooth: smoothing constant ``s``.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape.")
    target = target.float()
    p = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    dice = (2.0 * (p * target).sum() + smooth) / (p.sum() + target.sum() + smooth)
    return bce + 1.0 - dice


class DiceBCELoss(nn.Module):
    """Module form of :func:`dice_bce_loss` for MONAI trainers (``loss_function(pred, label)``)."""

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return dice_bce_loss(logits, target, self.smooth)
