"""TGMA's transferability matrices and what they drive: pseudo-label correction (ITM) and model selection (DTM).

- **ITM** (instance level, ``N_cases x M``): the LFTM of every source model on every target case. A case may span
  several network inputs (the slices of a volume): its LFTM then pools the soft-Dice sums of all its slices
  (:func:`pool_by_case`, our choice; ``itm_level="slice"`` in the runner scores each slice on its own).
- **Corrected pseudo-label**: ``y = argmax_c sum_k w[t, k] p_k`` with ``w[t] = ITM[t] / sum_k ITM[t, k]`` (softmax
  outputs), or the same weighted mean of the sigmoid probabilities thresholded at ``threshold`` (multi-label). The
  normalisation of the weights (ours) leaves the softmax argmax unchanged and makes the sigmoid threshold meaningful; a
  case on which every model scores 0 falls back to equal weights (ours).
- **DTM** (domain level, ``M``): the mean of the ITM over the target cases.
- **Model selection**: the models in decreasing DTM order, ties broken by the lower source index (ours,
  deterministic); the first is the main model, the next ``n_selected - 1`` the auxiliary ones (the paper: one main and
  one auxiliary, our default ``n_selected=2``). Their weights are their DTM scores normalised to sum to 1 (equal
  weights when all of them score 0).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from monai_tta.tgma.lftm import hard_foreground, soft_dice_from_terms

__all__ = [
    "ModelSelection",
    "pool_by_case",
    "instance_weights",
    "weighted_ensemble",
    "corrected_pseudo_label",
    "domain_transferability",
    "select_models",
]


def pool_by_case(
    intersection: torch.Tensor, total: torch.Tensor, case_ids: Sequence[Hashable], smooth: float = 1e-6
) -> tuple[list[Hashable], torch.Tensor]:
    """The ITM of cases that span several inputs: soft-Dice terms summed over each case's inputs, then the ratio.

    Args:
        intersection: ``(N_inputs, M, C_fg)`` per-input ``sum(p p̂)`` of each model.
        total: ``(N_inputs, M, C_fg)`` per-input ``sum(p) + sum(p̂)``.
        case_ids: the case of each input (``N_inputs``).
        smooth: soft-Dice smoothing.

    Returns:
        the cases in order of first appearance and the ITM ``(N_cases, M)``.

    Raises:
        ValueError: if the lengths differ.
    """
    if intersection.shape != total.shape or intersection.shape[0] != len(case_ids):
        raise ValueError(
            f"{len(case_ids)} case ids for terms of shapes {tuple(intersection.shape)}, {tuple(total.shape)}."
        )
    cases = list(dict.fromkeys(case_ids))
    row = {c: i for i, c in enumerate(cases)}
    index = torch.tensor([row[c] for c in case_ids], dtype=torch.long)
    shape = (len(cases), *intersection.shape[1:])
    inter = torch.zeros(shape, dtype=intersection.dtype).index_add_(0, index, intersection)
    tot = torch.zeros(shape, dtype=total.dtype).index_add_(0, index, total)
    return cases, soft_dice_from_terms(inter, tot, smooth)


def instance_weights(itm: torch.Tensor) -> torch.Tensor:
    """Rows of the ITM ``(N, M)`` normalised to sum to 1 (equal weights for a row of zeros).

    Raises:
        ValueError: for a negative entry or a matrix that is not 2D.
    """
    if itm.dim() != 2:
        raise ValueError(f"the ITM must be (cases, models), got shape {tuple(itm.shape)}.")
    if (itm < 0).any():
        raise ValueError("transferability scores must be >= 0.")
    sums = itm.sum(1, keepdim=True)
    uniform = torch.full_like(itm, 1.0 / itm.shape[1])
    return torch.where(sums > 0, itm / sums.clamp_min(torch.finfo(itm.dtype).tiny), uniform)


def weighted_ensemble(probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_k weights[b, k] probs[k, b]``: probabilities ``(M, B, C, *spatial)``, weights ``(B, M)`` or ``(M,)``.

    Raises:
        ValueError: if the number of models differs.
    """
    if weights.dim() == 1:
        weights = weights.expand(probs.shape[1], -1)
    if weights.shape != (probs.shape[1], probs.shape[0]):
        raise ValueError(
            f"weights {tuple(weights.shape)} do not match {probs.shape[0]} models x {probs.shape[1]} inputs."
        )
    w = weights.t().to(probs.dtype).reshape(*weights.t().shape, *([1] * (probs.dim() - 2)))
    return (w * probs).sum(0)


def corrected_pseudo_label(
    probs: torch.Tensor, itm_rows: torch.Tensor, activation: str = "sigmoid", threshold: float = 0.5
) -> torch.Tensor:
    """TGMA's corrected pseudo-labels: the hard foreground of the ITM-weighted ensemble.

    Args:
        probs: ``(M, B, C, *spatial)`` probabilities of the M source models on B inputs.
        itm_rows: ``(B, M)`` ITM row of each input's case (normalised here by :func:`instance_weights`).
        activation: ``"sigmoid"`` (threshold) or ``"softmax"`` (argmax).
        threshold: sigmoid threshold.

    Returns:
        binary foreground masks ``(B, C_fg, *spatial)`` (see :func:`~monai_tta.tgma.lftm.hard_foreground`).
    """
    return hard_foreground(weighted_ensemble(probs, instance_weights(itm_rows)), activation, threshold)


def domain_transferability(itm: torch.Tensor) -> torch.Tensor:
    """The DTM: mean of the ITM ``(N, M)`` over the cases, ``(M,)``.

    Raises:
        ValueError: for an empty or non-2D ITM.
    """
    if itm.dim() != 2 or itm.shape[0] == 0:
        raise ValueError(f"the ITM must be a non-empty (cases, models) matrix, got shape {tuple(itm.shape)}.")
    return itm.mean(0)


@dataclass(frozen=True)
class ModelSelection:
    """The selected source models: ``indices[0]`` is the main model, the rest the auxiliary ones, with their weights
    (summing to 1) and every model's DTM score."""

    indices: tuple[int, ...]
    weights: tuple[float, ...]
    scores: tuple[float, ...]

    @property
    def main(self) -> int:
        return self.indices[0]

    @property
    def auxiliary(self) -> tuple[int, ...]:
        return self.indices[1:]

    def as_dict(self) -> dict:
        return {"indices": list(self.indices), "weights": list(self.weights), "scores": list(self.scores)}


def select_models(dtm: torch.Tensor | Sequence[float], n_selected: int = 2) -> ModelSelection:
    """Rank the sources by DTM (ties: lower index first) and keep the best ``n_selected``, weighted by their scores.

    Args:
        dtm: ``(M,)`` domain-level transferability of each source model.
        n_selected: number of models kept (1 main + ``n_selected - 1`` auxiliary), ``1 <= n_selected <= M``.

    Raises:
        ValueError: if ``n_selected`` is out of range or a score is negative or not finite.
    """
    scores = [float(s) for s in (dtm.tolist() if isinstance(dtm, torch.Tensor) else dtm)]
    if not 1 <= n_selected <= len(scores):
        raise ValueError(f"n_selected must be between 1 and the number of sources ({len(scores)}), got {n_selected}.")
    if any(not (s >= 0 and s < float("inf")) for s in scores):
        raise ValueError(f"DTM scores must be finite and >= 0, got {scores}.")
    order = sorted(range(len(scores)), key=lambda k: (-scores[k], k))[:n_selected]
    kept = [scores[k] for k in order]
    total = sum(kept)
    weights = [s / total for s in kept] if total > 0 else [1.0 / n_selected] * n_selected
    return ModelSelection(tuple(order), tuple(weights), tuple(scores))
