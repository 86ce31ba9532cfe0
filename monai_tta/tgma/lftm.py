"""TGMA's label-free transferability metric (LFTM): prediction stability under a perturbation of the unattended region.

``LFTM(x, F) = 2 |P ∩ P̂| / (|P| + |P̂|)`` with ``P = F(x)`` and ``P̂ = F(x^m)``, where ``x^m`` is ``x`` perturbed
outside the region the model attends to (Yang, Liu and Yuan, MICCAI 2023). A model that has transferred well keeps
its prediction when the background changes a little; a model that has not, changes it. No TGMA code is public; these
choices are ours (``specs/dyna-tgma.md``):

- **Attention mask**: the model's own hard foreground (any sigmoid channel >= ``threshold``; softmax argmax not
  background), dilated by ``margin`` pixels (a max-pooling with a ``2 margin + 1`` window). Pixels outside it are the
  "regions the model does not attend to". An empty prediction attends to nothing, so the whole image is perturbed.
- **Perturbation** of the unattended pixels: ``"noise"`` (default) adds Gaussian noise of standard deviation
  ``strength`` times the image's own standard deviation (per sample and channel); ``"mean"`` replaces them by the
  image's mean (per sample and channel). The noise is drawn from a caller-given generator, so a run is reproducible
  and every source model sees the same perturbation of a case. ``margin`` and ``strength`` were fixed a priori, not
  tuned on any target.
- **Soft Dice** between the foreground probabilities (the sigmoid channels, or the softmax channels other than the
  background), ``(2 sum(p p̂) + smooth) / (sum p + sum p̂ + smooth)`` per channel, then the mean over channels. The
  sums can be pooled over several slices of one case before the ratio (:func:`soft_dice_from_terms`), which is how
  the runner scores a whole volume.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.utils import look_up_option
from torch import nn

from monai_tta.losses import activate

__all__ = [
    "ACTIVATIONS",
    "PERTURBATIONS",
    "foreground",
    "hard_foreground",
    "attention_mask",
    "perturb_unattended",
    "soft_dice_terms",
    "soft_dice_from_terms",
    "lftm",
    "lftm_terms",
]

ACTIVATIONS = ("sigmoid", "softmax")
PERTURBATIONS = ("noise", "mean")


def foreground(prob: torch.Tensor, activation: str) -> torch.Tensor:
    """The foreground channels of probabilities ``(B, C, *spatial)``: all of them (sigmoid) or all but channel 0
    (softmax, channel 0 = background).

    Raises:
        ValueError: for an unknown activation, or a softmax output with fewer than 2 channels.
    """
    activation = look_up_option(activation, ACTIVATIONS)
    if activation == "sigmoid":
        return prob
    if prob.shape[1] < 2:
        raise ValueError(f"a softmax output needs a background and at least one class, got {prob.shape[1]} channel.")
    return prob[:, 1:]


def hard_foreground(prob: torch.Tensor, activation: str, threshold: float = 0.5) -> torch.Tensor:
    """Binary foreground masks ``(B, C_fg, *spatial)`` of probabilities: ``p >= threshold`` per sigmoid channel, or
    the one-hot argmax without its background channel (softmax)."""
    activation = look_up_option(activation, ACTIVATIONS)
    if activation == "sigmoid":
        return (prob >= threshold).to(prob.dtype)
    onehot = F.one_hot(prob.argmax(1), prob.shape[1]).movedim(-1, 1).to(prob.dtype)
    return foreground(onehot, activation)


def attention_mask(prob: torch.Tensor, activation: str, margin: int = 4, threshold: float = 0.5) -> torch.Tensor:
    """The attended region ``(B, 1, *spatial)``: 1 on the predicted foreground (any class) dilated by ``margin``.

    Args:
        prob: probabilities ``(B, C, *spatial)`` (2 or 3 spatial axes).
        activation: ``"sigmoid"`` or ``"softmax"``.
        margin: dilation radius in pixels (0: the foreground itself).
        threshold: sigmoid binarisation threshold.

    Raises:
        ValueError: for a negative margin or an input that is not 2D or 3D.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}.")
    mask = hard_foreground(prob, activation, threshold).amax(1, keepdim=True)
    if margin == 0:
        return mask
    pools = {4: F.max_pool2d, 5: F.max_pool3d}
    if mask.dim() not in pools:
        raise ValueError(f"attention_mask expects (B, C, H, W[, D]), got shape {tuple(prob.shape)}.")
    return pools[mask.dim()](mask, kernel_size=2 * margin + 1, stride=1, padding=margin)


def perturb_unattended(
    image: torch.Tensor,
    attention: torch.Tensor,
    perturbation: str = "noise",
    strength: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``x^m``: the image with its unattended pixels (``attention == 0``) perturbed; attended pixels are unchanged.

    Args:
        image: ``(B, C, *spatial)``.
        attention: ``(B, 1, *spatial)`` mask (1 = attended), e.g. from :func:`attention_mask`.
        perturbation: ``"noise"`` (additive Gaussian, std = ``strength`` x the image's population std per sample and
            channel)
            or ``"mean"`` (the image's mean per sample and channel).
        strength: noise scale (``"noise"`` only).
        generator: random generator of the noise (drawn on the CPU, then moved to the image's device).

    Raises:
        ValueError: for an unknown perturbation or a negative strength.
    """
    perturbation = look_up_option(perturbation, PERTURBATIONS)
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}.")
    axes = tuple(range(2, image.dim()))
    keep = attention.to(image.dtype)
    if perturbation == "mean":
        return keep * image + (1 - keep) * image.mean(axes, keepdim=True)
    std = image.std(axes, keepdim=True, correction=0)
    noise = torch.randn(image.shape, generator=generator, dtype=image.dtype).to(image.device)
    return image + (1 - keep) * noise * std * strength


def soft_dice_terms(p: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample and channel: ``sum(p q)`` and ``sum(p) + sum(q)`` over the spatial axes, each ``(B, C)``."""
    if p.shape != q.shape:
        raise ValueError(f"the two predictions differ in shape: {tuple(p.shape)} and {tuple(q.shape)}.")
    axes = tuple(range(2, p.dim()))
    return (p * q).sum(axes), p.sum(axes) + q.sum(axes)


def soft_dice_from_terms(intersection: torch.Tensor, total: torch.Tensor, smooth: float = 1e-6) -> torch.Tensor:
    """``mean_c (2 I_c + smooth) / (T_c + smooth)`` over the last axis (channels) of pooled terms."""
    return ((2 * intersection + smooth) / (total + smooth)).mean(-1)


@torch.no_grad()
def lftm_terms(
    network: nn.Module,
    image: torch.Tensor,
    activation: str = "sigmoid",
    margin: int = 4,
    perturbation: str = "noise",
    strength: float = 0.5,
    threshold: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Predict, perturb the unattended region, predict again; return the soft-Dice terms and the first prediction.

    The network is used as it is (call ``eval()`` first for inference statistics).

    Returns:
        ``(intersection, total, prob)``: the terms of :func:`soft_dice_terms` between the foreground probabilities
        of ``x`` and ``x^m``, each ``(B, C_fg)``, and the probabilities ``(B, C, *spatial)`` of ``x``.
    """
    prob = activate(network(image), activation)
    attention = attention_mask(prob, activation, margin, threshold)
    masked = perturb_unattended(image, attention, perturbation, strength, generator)
    prob_m = activate(network(masked), activation)
    inter, total = soft_dice_terms(foreground(prob, activation), foreground(prob_m, activation))
    return inter, total, prob


def lftm(network: nn.Module, image: torch.Tensor, smooth: float = 1e-6, **kwargs) -> torch.Tensor:
    """LFTM of ``network`` on each sample of ``image``, ``(B,)`` in ``[0, 1]`` (higher = more transferable).

    Args:
        network: a source model.
        image: ``(B, C, *spatial)``.
        smooth: soft-Dice smoothing constant (an empty prediction against an empty one scores 1).
        kwargs: the options of :func:`lftm_terms`.
    """
    inter, total, _ = lftm_terms(network, image, **kwargs)
    return soft_dice_from_terms(inter, total, smooth)
