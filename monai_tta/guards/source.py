"""The source model inside an adapted network, and the label-free signals by which guards compare predictions."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from monai_tta.norms import AdaptiveBatchNorm, statistics_prior

__all__ = ["ACTIVATIONS", "mean_entropy", "probability_entropy", "source_model", "source_forward"]

#: how a network's logits are read: independent channels (multi-label) or exclusive classes.
ACTIVATIONS = ("sigmoid", "softmax")


def probability_entropy(prob: torch.Tensor, activation: str = "sigmoid") -> torch.Tensor:
    """Mean per-voxel entropy of probabilities ``prob``, normalised to ``[0, 1]`` (softmax: over the channels, by
    ``log C``; sigmoid: per channel, base 2). Scriptable (TGMA's served guard calls it)."""
    p = prob.float()
    if activation == "softmax":
        return -(p * torch.log(p.clamp_min(1e-12))).sum(1).mean() / math.log(max(p.shape[1], 2))
    h = -(p * torch.log(p.clamp_min(1e-12)) + (1 - p) * torch.log((1 - p).clamp_min(1e-12)))
    return h.mean() / math.log(2.0)


def mean_entropy(logits: torch.Tensor, activation: str = "sigmoid") -> torch.Tensor:
    """Mean per-pixel entropy of a prediction, normalised to ``[0, 1]`` (sigmoid: per channel, base 2): the
    :func:`probability_entropy` of its probabilities."""
    z = logits.float()
    return probability_entropy(torch.softmax(z, dim=1) if activation == "softmax" else torch.sigmoid(z), activation)


@contextmanager
def source_model(
    params: Sequence[nn.Parameter], snapshot: Sequence[torch.Tensor], norms: Sequence[AdaptiveBatchNorm]
) -> Iterator[None]:
    """Within the context, the network is the source model: the updated parameters ``params`` hold their source
    values ``snapshot`` and the normalisation layers ``norms`` the source statistics; the adapted values come back on
    exit, bit for bit."""
    with torch.no_grad():
        adapted = [p.detach().clone() for p in params]
        for p, v in zip(params, snapshot):
            p.copy_(v)
    try:
        with statistics_prior(norms, 1.0):
            yield
    finally:
        with torch.no_grad():
            for p, v in zip(params, adapted):
                p.copy_(v)


def source_forward(
    network: nn.Module,
    inputs: torch.Tensor,
    params: Sequence[nn.Parameter],
    snapshot: Sequence[torch.Tensor],
    norms: Sequence[AdaptiveBatchNorm],
) -> torch.Tensor:
    """The source model's prediction (logits) of ``inputs``, without gradient (see :func:`source_model`)."""
    with source_model(params, snapshot, norms), torch.no_grad():
        return network(inputs)
