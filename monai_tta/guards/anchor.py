"""The original source model as the last check of ``safe`` when the adapted network is itself a moving model.

``safe`` (:class:`~monai_tta.guards.SafeChoice`) compares the method's prediction with the *adapter's* source model:
the network as the adapter found it. A method that also changes that network between cases, outside the adapter,
moves the reference with it: DyNA's day model is the global student, self-trained by the nights on earlier days'
images, so from the second day on ``safe`` and the collapse safeguard take the global student as "the source". On
the embedded ``mild`` domain that student is below the original source model and nothing noticed (issue 18;
``docs/reliability.md``).

:class:`SourceAnchor` keeps a frozen copy of the original source model and, once ``safe`` has chosen, compares the
reported prediction with the original source model's prediction of the same input, under the same signal and with
the same margins: the original source model's score gains ``safe``'s source margin, the reported prediction's score
loses the mix margin of its statistics weight (``mix_margin * (1 - safe_prior)``, on a network with running
statistics), and a tie goes to the original source model. The moving model is then one more adapted state that must
show its evidence. No published method has it (ours, issue 18).

The signals: ``mixes`` scores the original source model by its agreement with itself at statistics weight 0.75 (its
neighbour on the path of mixes, as ``safe`` scores its own source candidate) and takes the reported prediction's
score from ``safe``'s record of the case (``safe_score_<choice>``); ``flip`` likewise, with the flipped input;
``entropy`` scores both predictions by minus their mean entropy. ``consensus`` and ``source`` score a candidate
against the others, which two predictions from different candidate sets do not share: there the anchor compares
the two by entropy (our choice). Cost: two forwards without gradient per case (one with the entropy).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from monai_tta.adapters.stats import StatKeys
from monai_tta.guards.safe_choice import SafeChoice
from monai_tta.guards.signals import SafeSignal, mix_neighbours, signal_scores
from monai_tta.norms import convert_norms, statistics_prior
from monai_tta.padding import network_divisor, pad_to_multiple

__all__ = ["SourceAnchor"]

#: the signals whose per-case score of a prediction does not depend on the other candidates.
_OWN_SCORE = (SafeSignal.MIXES, SafeSignal.FLIP, SafeSignal.ENTROPY)


class SourceAnchor:
    """The original source model, frozen, as a last candidate after ``safe`` (see the module docstring).

    Args:
        network: the original source network (plain normalisation layers or already converted); it is copied, and
            the copy never changes.
        safe: the ``safe`` choice whose signal and margins the anchor applies (the day adapter's ``safe``).
        activation: how the logits are read (``"sigmoid"`` or ``"softmax"``) when ``safe`` does not set it.

    Raises:
        ValueError: if ``network`` has no parameters to copy.
    """

    def __init__(self, network: nn.Module, safe: SafeChoice, activation: str = "sigmoid") -> None:
        if next(network.parameters(), None) is None:
            raise ValueError("SourceAnchor: the source network has no parameters.")
        self.network = copy.deepcopy(network).eval()
        for p in self.network.parameters():
            p.requires_grad_(False)
        self.norms = convert_norms(self.network)
        self.has_stats = any(layer.has_source_stats for layer in self.norms)
        self.safe = safe
        self.activation = safe.activation or activation

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The original source model's weights and statistics (the keys of the plain network's state dict)."""
        return {k: v.detach().clone() for k, v in self.network.state_dict().items()}

    def load_state_dict(self, values: dict[str, torch.Tensor]) -> None:
        """Restore the original source model saved by :meth:`state_dict` (a resumed run)."""
        self.network.load_state_dict(values)

    def differs_from(self, model: nn.Module) -> bool:
        """Whether ``model`` (same architecture) has other weights or statistics than the original source model."""
        other = model.state_dict()
        return any(k not in other or not torch.equal(v, other[k].to(v)) for k, v in self.network.state_dict().items())

    @torch.no_grad()
    def predict(self, x: torch.Tensor, prior: float = 1.0) -> torch.Tensor:
        """The original source model's logits of ``x`` ``(B, C, *spatial)`` with the normalisation statistics
        ``prior * source + (1 - prior) * x's own`` (1: the source model as trained), padded to the network's size
        multiple and cropped back."""
        x, crop = pad_to_multiple(x, network_divisor(self.network, x.dim() - 2))
        with statistics_prior(self.norms, prior):
            z = self.network(x)
        return z if crop is None else z[crop]

    def _signal(self, stats: dict[str, Any]) -> str:
        recorded = stats.get(StatKeys.SAFE_SIGNAL.value, self.safe.signal)
        if recorded == SafeSignal.MIXES and not self.has_stats:
            return SafeSignal.ENTROPY  # every statistics mix is the same forward (as in ``safe``)
        return recorded if recorded in _OWN_SCORE else SafeSignal.ENTROPY

    @torch.no_grad()
    def choose(
        self, inputs: torch.Tensor, logits: torch.Tensor, stats: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The prediction to report: ``logits`` (``safe``'s choice) or the original source model's.

        Args:
            inputs: the case ``(1, C, *spatial)`` as given to the adapter.
            logits: the prediction the adapter reported (same spatial size as ``inputs``).
            stats: the adapter's ``last_stats`` of the case (``safe``'s record: signal, choice, prior, scores).

        Returns:
            the logits to report, and the anchor's record: ``safe_anchor`` (whether the original source model's
            prediction is reported) and ``safe_anchor_margin`` (the reported prediction's score, less its mix margin,
            minus the original source model's score and source margin: positive keeps the reported prediction).
        """
        signal = self._signal(stats)
        source = self.predict(inputs)
        reported = None
        if signal == SafeSignal.ENTROPY:
            anchor_score, reported = signal_scores(SafeSignal.ENTROPY, [source, logits], self.activation)
        elif signal == SafeSignal.MIXES:
            near = [self.predict(inputs, q) for q in mix_neighbours(1.0)]
            anchor_score = signal_scores(signal, [source], self.activation, neighbours=[near])[0]
        else:
            flipped = torch.flip(self.predict(torch.flip(inputs, dims=(-1,))), dims=(-1,))
            anchor_score = signal_scores(signal, [source], self.activation, flipped=[flipped])[0]
        if reported is None:
            choice = stats.get(StatKeys.SAFE_CHOICE.value)
            reported = stats.get(f"{StatKeys.SAFE_SCORE.value}_{choice}")
            if reported is None:  # no record of safe's score (safe off): compare by entropy
                anchor_score, reported = signal_scores(SafeSignal.ENTROPY, [source, logits], self.activation)
        prior = stats.get(StatKeys.SAFE_PRIOR.value)
        prior = 1.0 if prior is None else float(prior)
        if self.has_stats:
            reported -= self.safe.mix_margin * (1.0 - prior)
        margin = float(reported) - (float(anchor_score) + self.safe.source_margin)
        keep = margin > 0.0
        record = {StatKeys.SAFE_ANCHOR.value: not keep, StatKeys.SAFE_ANCHOR_MARGIN.value: margin}
        return (logits if keep else source.to(logits)), record
