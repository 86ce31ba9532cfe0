"""TGMA never worse than before adaptation: what the served TGMA model returns, per volume (issue 18).

TGMA's adapted target model (:class:`~monai_tta.tgma.WeightedEnsemble` of the adapted main and auxiliary models) can
end below the ensemble it started from, "TGMA before adaptation": the same members untouched, with the same DTM
weights, itself chosen without labels. :class:`GuardedEnsemble` holds both and returns, by ``serve``
(:class:`TgmaServe`):

- ``"before"`` (the default since stop 25): TGMA before adaptation, one forward. On both measured draws of the
  embedded sites TGMA's adaptation lowered the mean and ended below it on some sites, the guard's choice on one site
  of each draw (thick -22.4 on the first, bias -2.3 on the second), and no label-free signal we measured tells those
  volumes from the ones where adaptation helped (the bundle's README). By issue 18's rule (first no site below the
  source model, then the highest mean) the untouched ensemble is the default and adaptation is opt-in.
- ``"guarded"``: per call, the target model's prediction unless the untouched ensemble is as good by a label-free
  signal, with the semantics and margins of ``safe`` (:class:`~monai_tta.guards.SafeChoice`) and of its source anchor
  (:class:`~monai_tta.guards.SourceAnchor`, the closest analogue: one reported prediction against one source model).
- ``"adapted"``: the adapted target model (the published method), one forward.

The guard's signals:

- ``"mixes"`` (the default, ``safe``'s): a prediction's score is its mean :func:`~monai_tta.guards.signals.agreement`
  with the same ensemble's prediction at the neighbouring BatchNorm statistics weights
  (:func:`~monai_tta.guards.signals.mix_neighbours` of 1: ``0.75 * running + 0.25 * input`` statistics, the input
  statistics over the call's batch); both ensembles predict at statistics weight 1, so no mix margin applies;
- ``"entropy"``: minus the mean entropy of the probabilities, normalised to ``[0, 1]`` as
  :func:`~monai_tta.guards.source.mean_entropy`; used instead of ``"mixes"`` when the members have no running
  statistics (every mix is then the same forward, as in ``safe``).

The untouched ensemble's score gains ``safe``'s source margin (0.01) and a tie goes to it: the target model is kept
when ``margin = score(target) - (score(source) + source_margin) > 0``. ``safe``'s step margin does not apply: TGMA's
adaptation retrains every parameter, it is not a step of the source (as in the anchor). The ensembles return
probabilities, so the signals read what they return, the same way for both.

The choice is made per call of :meth:`GuardedEnsemble.forward`, over the whole batch it gets: in the bundle that is
all the axial slices of one volume (:class:`~monai_tta.tgma.SliceWiseNetwork` with a batch of one volume,
``SimpleInferer``, as ``inference.json`` and MONAI Label run it), and the runner's evaluation calls it once per case.
A caller that sends several volumes, or windows of one, in a call gets one choice for that call. The choice of the last
call is kept in ``last_choice`` (``"target"`` or ``"source"``), ``last_margin`` and the two scores.

TorchScript: the whole choice is scriptable (the served model is ``torch.jit.script``-ed by the Model Zoo's
``ckpt_export``). The BatchNorm layers of both ensembles are swapped for :class:`MixedBatchNorm`, which shares the
layers' tensors (same state-dict keys) and reads its statistics weight from one 0-dimensional buffer shared by every
layer; the forward sets it to each neighbour and back to 1. A call is therefore not re-entrant: do not call one
instance from several threads at once. Cost per call: one ensemble forward for ``"before"`` and ``"adapted"``;
``"guarded"``: four with ``"mixes"``, two with the entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.utils import StrEnum, look_up_option
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from monai_tta.guards.safe_choice import SafeChoice
from monai_tta.guards.signals import SafeSignal, agreement, mix_neighbours
from monai_tta.guards.source import probability_entropy
from monai_tta.tgma.adaptation import WeightedEnsemble

__all__ = ["GUARD_SIGNALS", "GuardedEnsemble", "MixedBatchNorm", "TgmaServe"]

#: the signals of the guard (those that score a prediction on its own, as the source anchor's).
GUARD_SIGNALS = (SafeSignal.MIXES.value, SafeSignal.ENTROPY.value)


class TgmaServe(StrEnum):
    """What :class:`GuardedEnsemble` returns (module docstring)."""

    BEFORE = "before"
    GUARDED = "guarded"
    ADAPTED = "adapted"


class MixedBatchNorm(nn.Module):
    """BatchNorm with statistics ``w * running + (1 - w) * input`` (biased, over the batch and spatial axes), ``w`` the
    shared buffer ``mix``; ``w >= 1`` is the plain inference forward (``F.batch_norm`` with the running statistics,
    bit for bit); a layer without running statistics normalises with the batch's, as ``nn.BatchNorm`` does. The same
    arithmetic as :class:`~monai_tta.norms.AdaptiveBatchNorm` under
    :func:`~monai_tta.norms.statistics_prior`, in a scriptable layer. Shares ``bn``'s parameters and buffers."""

    def __init__(self, bn: _BatchNorm, mix: torch.Tensor) -> None:
        super().__init__()
        self.eps = float(bn.eps)
        self.weight = bn.weight
        self.bias = bn.bias
        self.register_buffer("running_mean", bn.running_mean)
        self.register_buffer("running_var", bn.running_var)
        self.register_buffer("num_batches_tracked", bn.num_batches_tracked)
        self.register_buffer("mix", mix, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = float(self.mix)
        running_mean, running_var = self.running_mean, self.running_var
        if running_mean is None or running_var is None:  # nn.BatchNorm without running statistics: the batch's
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        if w >= 1.0:
            return F.batch_norm(x, running_mean, running_var, self.weight, self.bias, False, 0.0, self.eps)
        dims = [0]
        for d in range(2, x.dim()):
            dims.append(d)
        var, mean = torch.var_mean(x, dim=dims, unbiased=False, keepdim=True)
        shape = [1, -1] + [1] * (x.dim() - 2)
        mean = w * running_mean.view(shape) + (1.0 - w) * mean
        var = w * running_var.view(shape) + (1.0 - w) * var
        out = (x - mean) * torch.rsqrt(var + self.eps)
        weight, bias = self.weight, self.bias
        if weight is not None and bias is not None:
            out = out * weight.view(shape) + bias.view(shape)
        return out


def _convert(network: nn.Module, mix: torch.Tensor) -> bool:
    """Swap every BatchNorm layer of ``network`` for a :class:`MixedBatchNorm` on ``mix`` (in place); whether one of
    them has running statistics."""
    stats = False
    for module in list(network.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, _BatchNorm):
                stats = stats or child.running_mean is not None
                setattr(module, name, MixedBatchNorm(child, mix))
    return stats


class GuardedEnsemble(nn.Module):
    """TGMA before adaptation, the guarded choice or the adapted target model, by ``serve`` (module docstring).

    Args:
        target: the adapted ensemble (TGMA's target model).
        source: the ensemble before adaptation: the same architecture, the untouched source weights, the same weights.
        signal: ``"mixes"`` or ``"entropy"``; ``"mixes"`` falls back to the entropy without running statistics.
        source_margin: the untouched ensemble's score gains this (``safe``'s default, 0.01).
        serve: ``"before"`` (default): the untouched ensemble, one forward; ``"guarded"``: the choice per call;
            ``"adapted"``: the target model, one forward. The checkpoint (both ensembles) is the same for all three
            (a served bundle's ``serve``).

    Raises:
        ValueError: for an unknown signal or ``serve``, a negative margin, or ensembles with other activations or
            member counts.
    """

    def __init__(
        self,
        target: WeightedEnsemble,
        source: WeightedEnsemble,
        signal: str = SafeChoice.signal,
        source_margin: float = SafeChoice.source_margin,
        serve: str = TgmaServe.BEFORE,
    ) -> None:
        super().__init__()
        if target.activation != source.activation or len(target.members) != len(source.members):
            raise ValueError(
                f"GuardedEnsemble: the target ({len(target.members)} members, {target.activation}) and the source "
                f"ensemble ({len(source.members)} members, {source.activation}) must match: build the source from "
                "the untouched copies of the same selected sources."
            )
        if source_margin < 0:
            raise ValueError(f"GuardedEnsemble: source_margin must be >= 0, got {source_margin}.")
        signal = look_up_option(str(signal), GUARD_SIGNALS)
        self.serve = str(look_up_option(str(serve), TgmaServe))
        self.register_buffer("mix", torch.ones(()), persistent=False)
        stats = _convert(target, self.mix)
        stats = _convert(source, self.mix) or stats
        self.target, self.source = target, source
        self.activation = target.activation
        self.signal = signal if stats else SafeSignal.ENTROPY.value
        self.neighbours = mix_neighbours(1.0)
        self.source_margin = float(source_margin)
        self.last_choice = ""
        self.last_margin = 0.0
        self.last_target_score = 0.0
        self.last_source_score = 0.0

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 - nn.Module's signature
        """Move or cast as ``nn.Module`` does, then share ``mix`` again (a move copies each buffer on its own)."""
        super()._apply(fn, recurse)
        for module in self.modules():
            if isinstance(module, MixedBatchNorm):
                module.mix = self.mix
        return self

    def _score(self, x: torch.Tensor, prob: torch.Tensor, use_target: bool) -> torch.Tensor:
        if self.signal == "entropy":
            return -probability_entropy(prob, self.activation)
        values = []
        for w in self.neighbours:
            self.mix.fill_(w)
            near = self.target(x) if use_target else self.source(x)
            values.append(agreement(prob.float(), near.float(), self.activation))
        self.mix.fill_(1.0)
        return torch.stack(values).mean()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.mix.fill_(1.0)  # whatever an interrupted call left
        # plain strings (TgmaServe's values): the forward is scripted, and TorchScript does not read the enum class
        if self.serve == "before":
            self.last_choice, self.last_margin = "source", 0.0
            return self.source(x)
        target = self.target(x)
        if self.serve == "adapted":
            self.last_choice, self.last_margin = "target", 0.0
            return target
        source = self.source(x)
        target_score = self._score(x, target, True)
        source_score = self._score(x, source, False)
        margin = float(target_score) - (float(source_score) + self.source_margin)
        self.last_target_score, self.last_source_score = float(target_score), float(source_score)
        self.last_margin = margin
        if margin > 0.0:
            self.last_choice = "target"
            return target
        self.last_choice = "source"
        return source
