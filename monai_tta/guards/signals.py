"""Label-free signals by which :class:`~monai_tta.guards.SafeChoice` scores its candidates (higher is better).

- ``entropy``: minus the mean per-voxel entropy (:func:`~monai_tta.guards.source.mean_entropy`) of the candidate;
- ``flip``: agreement of the candidate with its own prediction of the input flipped along its last spatial axis
  (flipped back): one more forward per candidate;
- ``consensus``: agreement of the candidate with the mean probabilities of all the candidates;
- ``source``: agreement of the candidate with the source model's prediction; the source candidate itself (which
  agrees with itself) scores the mean agreement of the other candidates with it, so that the candidate closest to the
  source is chosen when it is clearly closer than the others on average (the source's margin applies);
- ``mixes``: stability across statistics mixes: the mean agreement of the candidate with the predictions of the same
  weights with statistics weights ``p - 0.25`` and ``p + 0.25`` (those in ``[0, 1]``), ``p`` the candidate's; a
  prediction that barely moves when the statistics move a little is taken as settled. Two or three more forwards per
  case (the neighbours are shared between candidates), one or two more when the method's regime is off the 0.25
  grid.

Agreement of two predictions is :func:`agreement`: the mean over voxels of ``1 - |p - q|`` per channel (sigmoid) or
of ``sum_c min(p_c, q_c)`` (softmax), in ``[0, 1]`` (1: the same probabilities): the definition stated in
``docs/reliability.md`` before measuring. (A soft Dice per channel, tried after, is undefined where a candidate
predicts almost nothing on the scored patches and chose the hallucinating method on the ``pelvis`` site.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.utils import StrEnum

from monai_tta.guards.source import mean_entropy

__all__ = ["MIX_STEP", "SafeSignal", "agreement", "mix_neighbours", "probabilities", "signal_scores"]


class SafeSignal(StrEnum):
    """The label-free signals of the ``safe`` choice (see the module docstring)."""

    ENTROPY = "entropy"
    FLIP = "flip"
    CONSENSUS = "consensus"
    SOURCE = "source"
    MIXES = "mixes"


#: the step between a candidate's statistics weight and its neighbours' (``mixes``).
MIX_STEP = 0.25


def mix_neighbours(prior: float) -> list[float]:
    """The statistics weights next to ``prior`` on the path of mixes (``prior -+ MIX_STEP`` within ``[0, 1]``)."""
    return [q for q in (round(prior - MIX_STEP, 6), round(prior + MIX_STEP, 6)) if 0.0 <= q <= 1.0]


def probabilities(logits: torch.Tensor, activation: str) -> torch.Tensor:
    """The probabilities of ``logits`` (float32)."""
    z = logits.float()
    return torch.softmax(z, dim=1) if activation == "softmax" else torch.sigmoid(z)


def agreement(p: torch.Tensor, q: torch.Tensor, activation: str) -> torch.Tensor:
    """Agreement in ``[0, 1]`` of two probability maps of the same shape (see the module docstring)."""
    if activation == "softmax":
        return torch.minimum(p, q).sum(1).mean()
    return (1.0 - (p - q).abs()).mean()


def signal_scores(
    signal: str,
    outputs: Sequence[torch.Tensor],
    activation: str,
    source_index: int | None = None,
    flipped: Sequence[torch.Tensor] | None = None,
    neighbours: Sequence[Sequence[torch.Tensor]] | None = None,
) -> list[float]:
    """The score (higher is better) of each candidate's prediction under ``signal``.

    Args:
        signal: a :class:`SafeSignal`.
        outputs: the candidates' logits on the scored input (the same shape).
        activation: ``"sigmoid"`` or ``"softmax"``.
        source_index: the index of the source model's candidate (``signal="source"``; required there).
        flipped: ``signal="flip"``: each candidate's logits of the flipped input, flipped back.
        neighbours: ``signal="mixes"``: for each candidate, the logits of its neighbours on the path of statistics
            mixes (:func:`mix_neighbours`); a candidate without any scores 1.

    Raises:
        ValueError: for ``"source"`` without ``source_index``, ``"flip"`` without ``flipped`` or ``"mixes"`` without
            ``neighbours``.
    """
    if signal == SafeSignal.ENTROPY:
        return [-float(h) for h in torch.stack([mean_entropy(z, activation) for z in outputs]).tolist()]
    probs = [probabilities(z, activation) for z in outputs]
    if signal == SafeSignal.FLIP:
        if flipped is None or len(flipped) != len(outputs):
            raise ValueError("the flip signal needs each candidate's prediction of the flipped input.")
        values = [agreement(p, probabilities(f, activation), activation) for p, f in zip(probs, flipped)]
    elif signal == SafeSignal.CONSENSUS:
        mean = torch.stack(probs).mean(0)
        values = [agreement(p, mean, activation) for p in probs]
    elif signal == SafeSignal.MIXES:
        if neighbours is None or len(neighbours) != len(outputs):
            raise ValueError("the mixes signal needs each candidate's neighbours on the path of statistics mixes.")
        values = [
            torch.stack([agreement(p, probabilities(z, activation), activation) for z in near]).mean()
            if near
            else torch.ones(())
            for p, near in zip(probs, neighbours)
        ]
    elif signal == SafeSignal.SOURCE:
        if source_index is None:
            raise ValueError("the source signal needs the source model among the candidates.")
        values = [agreement(p, probs[source_index], activation) for p in probs]
        others = [v for i, v in enumerate(values) if i != source_index]
        if others:
            values[source_index] = torch.stack(others).mean()
    else:
        raise ValueError(f"unknown signal {signal!r}; use one of {[s.value for s in SafeSignal]}.")
    return [float(v) for v in torch.stack(values).tolist()]
