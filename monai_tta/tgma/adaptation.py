"""TGMA's adaptation: the target model is the weighted main + auxiliary models, trained on the corrected pseudo-labels.

``min_F L_dice(y_t, W_main F_main(x_t) + W_aux F_aux(x_t))``. Our reading where the paper is silent
(``specs/dyna-tgma.md``):

- ``F(x)`` are probabilities (sigmoid or softmax), so the weighted sum (weights summing to 1) is itself a probability
  map; the target model at inference is that weighted ensemble of the adapted copies of the selected sources.
- The weights ``W`` stay fixed at their normalised DTM scores (the paper's notation also minimises over ``W``; we do
  not train them).
- ``L_dice`` is the soft Dice loss on the foreground channels (sigmoid: all channels; softmax: all but the
  background), computed over the whole batch (as MONAI's ``DiceLoss(batch=True)``) with smoothing 1 in numerator and
  denominator, so that slices without foreground do not dominate. Under DDP the batch is the *global* batch: the
  Dice terms are summed across the ranks before the ratio (:func:`monai_tta.data_parallel.all_reduce_sum`).
- Every parameter of the selected copies is trained (Adam, lr 1e-3 as in the paper), BatchNorm layers in training
  mode (batch statistics, running statistics updated) as in ordinary supervised training; no augmentation.
- The training loop is MONAI's ``SupervisedTrainer``: the batches carry the image and the pseudo-label as ``label``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.utils import look_up_option
from torch import nn

from monai_tta.data_parallel import all_reduce_sum
from monai_tta.tgma.lftm import ACTIVATIONS, foreground, soft_dice_from_terms, soft_dice_terms

__all__ = ["WeightedEnsemble", "EnsembleDiceLoss", "tgma_trainer"]


class WeightedEnsemble(nn.Module):
    """``sum_k w_k activation(F_k(x))``: the TGMA target model (main + auxiliary members, fixed weights).

    Args:
        members: the member networks (trained in place; pass copies to keep the sources untouched).
        weights: one weight per member (normalised here to sum to 1).
        activation: ``"sigmoid"`` or ``"softmax"``.

    Raises:
        ValueError: if the counts differ, a weight is negative, or all weights are 0.
    """

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float], activation: str = "sigmoid") -> None:
        super().__init__()
        if len(members) != len(weights) or not members:
            raise ValueError(f"need one weight per member, got {len(members)} members and {len(weights)} weights.")
        w = torch.as_tensor([float(v) for v in weights], dtype=torch.float32)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be >= 0 and not all 0, got {list(weights)}.")
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", w / w.sum())
        self.activation = look_up_option(activation, ACTIVATIONS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        terms = []
        for k, member in enumerate(self.members):  # enumerate, not zip: scriptable (the served model is TorchScript)
            y = member(x)
            y = torch.softmax(y, dim=1) if self.activation == "softmax" else torch.sigmoid(y)
            terms.append(self.weights[k] * y)
        out = terms[0]
        for term in terms[1:]:
            out = out + term
        return out


class EnsembleDiceLoss(nn.Module):
    """Dice loss between ensemble probabilities ``(B, C, *spatial)`` and binary foreground targets ``(B, C_fg, ...)``.

    ``1 - mean_c (2 sum(p y) + smooth) / (sum(p) + sum(y) + smooth)``, the sums over the batch and the spatial axes
    (MONAI's ``DiceLoss(batch=True)``).

    Args:
        activation: the ensemble's activation (the softmax background channel is dropped before the loss).
        smooth: smoothing of numerator and denominator.
        across_ranks: sum the terms over the ranks of the process group first (DDP: the loss of the global batch,
            the same on every rank).

    Raises:
        ValueError: (when called) if the foreground and the target differ in shape.
    """

    def __init__(self, activation: str = "sigmoid", smooth: float = 1.0, across_ranks: bool = False) -> None:
        super().__init__()
        self.activation = look_up_option(activation, ACTIVATIONS)
        self.smooth, self.across_ranks = smooth, across_ranks

    def forward(self, prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fg = foreground(prob, self.activation)
        if fg.shape != target.shape:
            raise ValueError(f"foreground {tuple(fg.shape)} and pseudo-label {tuple(target.shape)} differ in shape.")
        intersection, total = (t.sum(0) for t in soft_dice_terms(fg, target.to(fg.dtype)))
        if self.across_ranks:
            intersection, total = all_reduce_sum(torch.stack([intersection, total])).unbind(0)
        return 1 - soft_dice_from_terms(intersection, total, self.smooth)


def tgma_trainer(
    ensemble: WeightedEnsemble,
    train_data_loader: Any,
    optimizer: torch.optim.Optimizer,
    device: torch.device | str = "cpu",
    max_epochs: int = 1,
    smooth: float = 1.0,
    network: nn.Module | None = None,
    **kwargs: Any,
) -> SupervisedTrainer:
    """A MONAI ``SupervisedTrainer`` of the ensemble against the pseudo-labels (the batches' ``label``).

    Args:
        ensemble: the target model.
        train_data_loader: batches of ``{"image", "label"}`` (label = binary foreground pseudo-label).
        optimizer: optimizer over the ensemble's parameters.
        device: device of the run.
        max_epochs: passes over the loader.
        smooth: Dice smoothing.
        network: the module the trainer calls, when it is not ``ensemble`` itself: the ensemble wrapped in
            ``DistributedDataParallel`` (:func:`monai_tta.data_parallel.wrap_ddp`); the loss then sums its terms
            across the ranks.
        kwargs: other ``SupervisedTrainer`` arguments (``decollate`` defaults to ``False``).
    """
    kwargs.setdefault("decollate", False)
    return SupervisedTrainer(
        device=device,
        max_epochs=max_epochs,
        train_data_loader=train_data_loader,
        network=ensemble if network is None else network,
        optimizer=optimizer,
        loss_function=EnsembleDiceLoss(ensemble.activation, smooth, across_ranks=network not in (None, ensemble)),
        **kwargs,
    )
