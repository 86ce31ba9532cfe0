"""Losses shared by the adaptation methods and the source training."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from monai.utils import look_up_option
from torch import nn

if TYPE_CHECKING:
    from monai_tta.norms import AdaptiveBatchNorm

__all__ = [
    "activate",
    "entropy_loss",
    "consistency_loss",
    "pseudo_target",
    "DiceBCELoss",
    "dice_bce_loss",
    "bn_alignment_loss",
    "masked_dice_bce_loss",
]

_ACTIVATIONS = ("sigmoid", "softmax")


def activate(logits: torch.Tensor, activation: str = "sigmoid") -> torch.Tensor:
    """Probabilities of ``(B, C, *spatial)`` logits: per-channel sigmoid (multi-label) or softmax over ``C``.

    Args:
        logits: ``(B, C, *spatial)`` logits.
        activation: ``"sigmoid"`` or ``"softmax"``.

    Raises:
        ValueError: for an unknown activation, or ``"softmax"`` on logits with fewer than 2 channels.
    """
    activation = look_up_option(activation, _ACTIVATIONS)
    if activation == "softmax":
        _check_softmax_channels(logits)
        return torch.softmax(logits, dim=1)
    return torch.sigmoid(logits)


def _check_softmax_channels(logits: torch.Tensor) -> None:
    """A softmax over one channel is the constant 1: no objective, no gradient. Say so instead of adapting nothing."""
    if logits.dim() >= 2 and logits.shape[1] < 2:
        raise ValueError(
            f"activation='softmax' needs logits with at least 2 channels (the classes, background included), got "
            f"shape {tuple(logits.shape)}: a 1-channel head is a sigmoid (binary) output, use activation='sigmoid'."
        )


def entropy_map(logits: torch.Tensor, activation: str = "sigmoid", eps: float = 1e-6) -> torch.Tensor:
    """Per-pixel entropy ``-sum_c p_c log(p_c + eps)``, shape ``(B, *spatial)``.

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
    p = activate(logits, activation)
    return -(p * torch.log(p + eps)).sum(dim=1)


def entropy_loss(logits: torch.Tensor, activation: str = "sigmoid", eps: float = 1e-6) -> torch.Tensor:
    """Mean pixel entropy ``mean_{b, spatial} [ -sum_c p_c log(p_c + eps) ]`` (GraTa's auxiliary loss, TENT's loss).

    See :func:`entropy_map` for the arguments.
    """
    return entropy_map(logits, activation, eps).mean()


def pseudo_target(probs: torch.Tensor, activation: str = "sigmoid") -> torch.Tensor:
    """GraTa's pseudo-label from (view-averaged) probabilities ``(B, C, *spatial)``.

    ``"sigmoid"``: the probabilities themselves (a soft multi-label target, as published). ``"softmax"``: the one-hot
    of their argmax over the classes (background included), the hard label of exclusive classes.

    Raises:
        ValueError: for an unknown activation.
    """
    activation = look_up_option(activation, _ACTIVATIONS)
    if activation == "sigmoid":
        return probs
    return F.one_hot(probs.argmax(1), probs.shape[1]).movedim(-1, 1).to(probs.dtype)


def consistency_loss(logits: torch.Tensor, soft_target: torch.Tensor, activation: str = "sigmoid") -> torch.Tensor:
    """GraTa's pseudo loss of the strong view's logits against the pseudo-label (probabilities of the same shape).

    ``"sigmoid"``: BCE with logits against a target in ``[0, 1]``, mean over all elements (as published).
    ``"softmax"``: cross-entropy ``-sum_c t_c log softmax(z)_c`` against a target that sums to 1 over the channels
    (one-hot or soft), mean over the batch and the voxels.

    Args:
        logits: ``(B, C, *spatial)`` logits of the strong view.
        soft_target: pseudo-label of the same shape.
        activation: ``"sigmoid"`` or ``"softmax"``.

    Raises:
        ValueError: if the shapes differ, for an unknown activation, or ``"softmax"`` with fewer than 2 channels.
    """
    activation = look_up_option(activation, _ACTIVATIONS)
    if logits.shape != soft_target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(soft_target.shape)} differ in shape.")
    if activation == "sigmoid":
        return F.binary_cross_entropy_with_logits(logits, soft_target)
    _check_softmax_channels(logits)
    return F.cross_entropy(logits, soft_target)


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


def bn_alignment_loss(layers: Sequence[AdaptiveBatchNorm]) -> torch.Tensor:
    """VPTTA's statistics-alignment loss over the layers that recorded their last forward (methods spec §3.3).

    For each layer with ``recorded = (x, mu_w, var_w)`` (the input and the statistics it was normalised with):
    ``mean_{b,c} |mu_w - mu_inst| + mean_{b,c} |sqrt(var_w) - sigma_inst|``, where ``mu_inst`` and ``sigma_inst`` are
    the mean and the unbiased standard deviation of ``x`` over its spatial axes, per sample and channel, and carry the
    gradient. The result is the mean over the layers. (As in the reference, a channel that is constant over space has
    an undefined standard-deviation gradient.)

    Args:
        layers: adaptive BatchNorm layers; those whose ``recorded`` is ``None`` are skipped.

    Raises:
        ValueError: if no layer has recorded a forward.
    """
    terms = []
    for layer in layers:
        if layer.recorded is None:
            continue
        x, mean_w, var_w = layer.recorded
        var_i, mean_i = torch.var_mean(x, dim=tuple(range(2, x.dim())), unbiased=True, keepdim=True)
        terms.append((mean_w - mean_i).abs().mean() + (var_w.sqrt() - var_i.sqrt()).abs().mean())
    if not terms:
        raise ValueError("no layer recorded its statistics: set layer.record = True before the forward.")
    return torch.stack(terms).mean()


def masked_dice_bce_loss(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, smooth: float = 1.0
) -> torch.Tensor:
    """:func:`dice_bce_loss` restricted to the elements where ``mask`` is 1 (confidence-masked pseudo-labels).

    ``BCE = sum(m * bce) / max(sum(m), 1)`` and ``Dice = (2 sum(m p y) + s) / (sum(m p) + sum(m y) + s)``, over the
    whole batch and all channels flattened together; the loss is ``BCE + 1 - Dice`` (0 with zero gradient when the
    mask is empty).

    Args:
        logits: ``(B, C, *spatial)`` logits.
        target: binary target of the same shape.
        mask: weights in ``[0, 1]`` of the same shape (1 = use the element).
        smooth: smoothing constant ``s``.

    Raises:
        ValueError: if the shapes differ.
    """
    if logits.shape != target.shape or logits.shape != mask.shape:
        shapes = (tuple(logits.shape), tuple(target.shape), tuple(mask.shape))
        raise ValueError(f"logits, target and mask differ in shape: {shapes}.")
    target, mask = target.to(logits.dtype), mask.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = (bce * mask).sum() / mask.sum().clamp_min(1.0)
    p = torch.sigmoid(logits) * mask
    y = target * mask
    dice = (2.0 * (p * y).sum() + smooth) / (p.sum() + y.sum() + smooth)
    return bce + 1.0 - dice
