"""``safe``: a label-free choice of the reported prediction, shared by every method.

No published method has it. After a method's update, :class:`SafeChoice` compares the prediction the method reports
with a few *candidates* made on the same case, and returns the most confident one (lowest mean per-pixel entropy,
:func:`mean_entropy`):

- ``"method"``: the method's own prediction (its weights, its statistics regime, what it reports);
- ``"stats_<p>"``: the adapted state (the method's current weights, and VPTTA's prompt) with the normalisation
  statistics ``p * source + (1 - p) * image`` (``p`` in ``priors``: 1 the source statistics, 0 the image's own);
- ``"source"``: the source model (source weights, source statistics), when ``source`` is on.

The choice is made per case (``per="case"``: each case picks its own candidate) or per domain (``per="domain"``: the
candidate of lowest mean entropy over the cases of the current domain so far, this one included; the running sums
restart when the domain given to :meth:`~monai_tta.adapters.base.Adapter.set_domain` changes and at an explicit
``reset()``). The source's prediction (the source model, or the source statistics of a method without weights) is
preferred by a margin (``source_margin``, 0.01 of the entropy's range: another candidate must be clearly more
confident); other ties go to the earlier candidate in the order above.

Why entropy (our choice; no paper gives a rule): on the embedded data the prediction made with statistics that fit
the image is the more confident one (per-image statistics fix the large shifts, camera and contrast, and cost a few
points where the source statistics already fit, blur and fov), and it needs no label, no extra view and no state.
Agreement between views would cost the views' forwards (GraTa's 6 views already are its main cost).

What it changes, and what it does not: only the returned prediction. The method's update runs in its own regime,
as published, whatever is chosen (the adapted state keeps evolving by the method's rule: the choice never feeds back
into the update); the candidates' forwards run without gradient and leave the network, the statistics regime and the
method's state as they were. ``last_stats`` records the candidate kept (``safe_choice``), the statistics weight of
its prediction (``safe_prior``, the source's share: 1 for the source model) and whether it is the source model
(``safe_source``).

Cost: one forward without gradient per candidate besides the method's own (3 with the defaults). Whole inputs only
(a volume adapted on patches has no single forward to compare).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from monai.utils import look_up_option
from torch import nn

from monai_tta.adapters.safe_options import SafeCandidate, SafePer
from monai_tta.adapters.stats import StatKeys
from monai_tta.norms import statistics_prior

if TYPE_CHECKING:
    from monai_tta.adapters.base import Adapter, AdapterState

__all__ = ["SafeChoice", "mean_entropy", "source_model", "source_forward", "candidate_label"]

_ACTIVATIONS = ("sigmoid", "softmax")
# per-domain running sums in ``AdapterState.extra`` (plain numbers: adapter checkpoints keep them)
_SUM_PREFIX, _COUNT = "safe_domain_sum_", "safe_domain_n"


def mean_entropy(logits: torch.Tensor, activation: str = "sigmoid") -> torch.Tensor:
    """Mean per-pixel entropy of a prediction, normalised to ``[0, 1]`` (sigmoid: per channel, base 2)."""
    z = logits.float()
    if activation == "softmax":
        p = torch.softmax(z, dim=1)
        return -(p * torch.log(p.clamp_min(1e-12))).sum(1).mean() / math.log(max(z.shape[1], 2))
    p = torch.sigmoid(z)
    h = -(p * torch.log(p.clamp_min(1e-12)) + (1 - p) * torch.log((1 - p).clamp_min(1e-12)))
    return h.mean() / math.log(2.0)


@contextmanager
def source_model(state: AdapterState) -> Iterator[None]:
    """Within the context, the network of ``state`` is the source model: the updated parameters hold their source
    values and the normalisation layers the source statistics; the adapted values come back on exit, bit for bit."""
    with torch.no_grad():
        adapted = [p.detach().clone() for p in state.params]
        for p, v in zip(state.params, state.snapshot):
            p.copy_(v)
    try:
        with statistics_prior(state.norms, 1.0):
            yield
    finally:
        with torch.no_grad():
            for p, v in zip(state.params, adapted):
                p.copy_(v)


def source_forward(state: AdapterState, network: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The source model's prediction (logits) of ``inputs``, without gradient (see :func:`source_model`)."""
    with source_model(state), torch.no_grad():
        return network(inputs)


def candidate_label(prior: float) -> str:
    """The label of the candidate with statistics weight ``prior`` (e.g. ``"stats_0.5"``)."""
    return f"{SafeCandidate.STATS}_{float(prior):g}"


@dataclass
class SafeChoice:
    """The label-free choice of the reported prediction among the method's own, the adapted state with other
    statistics, and the source model (see the module docstring).

    Args:
        priors: statistics weights of the adapted-state candidates (1: source statistics, 0: the image's, between:
            a mix); may be empty.
        source: whether the source model's prediction is a candidate.
        per: ``"case"`` (each case chooses) or ``"domain"`` (one choice from the entropies of the domain's cases so
            far).
        activation: how the entropy is read from the logits, ``"sigmoid"`` or ``"softmax"``; ``None``: the
            adapter's ``activation`` attribute, else sigmoid.
        source_margin: the source's prediction (the source model, or the source statistics of a method without
            weights) is kept unless another candidate's entropy is lower by more than this (entropies are in
            ``[0, 1]``): where they are within 1% of each other the sign of the difference is noise, and erring
            towards the source can only cost adaptation gains, never fall below it (the safeguard's margin too).

    Raises:
        ValueError: for a prior outside ``[0, 1]``, an unknown ``per`` or activation.
    """

    priors: Sequence[float] = (1.0, 0.5, 0.0)
    source: bool = True
    per: str = SafePer.CASE
    activation: str | None = None
    source_margin: float = 0.01

    def __post_init__(self) -> None:
        if any(not 0.0 <= float(p) <= 1.0 for p in self.priors):
            raise ValueError(f"safe: priors must be weights in [0, 1], got {list(self.priors)}.")
        self.priors = tuple(dict.fromkeys(float(p) for p in self.priors))  # unique, in order
        self.per = look_up_option(self.per, SafePer)
        if self.activation is not None:
            self.activation = look_up_option(self.activation, _ACTIVATIONS)
        if self.source_margin < 0:
            raise ValueError(f"safe: source_margin must be >= 0, got {self.source_margin}.")

    @classmethod
    def from_any(cls, value: SafeChoice | dict | bool | str | None) -> SafeChoice | None:
        """``None``/``False``: off; ``True``: the defaults; ``"case"``/``"domain"``: the defaults chosen per case or
        per domain; a dict: its fields; a :class:`SafeChoice` as it is.

        Raises:
            TypeError: for any other value.
        """
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, str):
            return cls(per=value)
        if isinstance(value, dict):
            return cls(**value)
        if isinstance(value, cls):
            return value
        raise TypeError(f"safe must be a SafeChoice, a dict of its fields, 'case', 'domain' or a bool, got {value!r}.")

    @staticmethod
    def clear(state: AdapterState) -> None:
        """Forget the per-domain entropies (a new domain, or an explicit reset)."""
        for key in [k for k in state.extra if k.startswith(_SUM_PREFIX) or k == _COUNT]:
            del state.extra[key]

    def candidates(self, adapter: Adapter, state: AdapterState) -> list[tuple[str, float | None]]:
        """``(label, statistics weight)`` of each candidate besides the method's own, in the order of the choice.

        The source model's weight is ``None``. A candidate that is the method's own prediction, or another candidate,
        by construction is left out: a method without updated weights whose prediction is a plain forward
        (:attr:`~monai_tta.adapters.base.Adapter.plain_prediction`) makes ``stats_<p>`` of its own regime, and
        ``source`` when ``stats_1`` is there (or is its own regime), the same forward.
        """
        plain = adapter.plain_prediction and not state.params
        own = adapter.norm.source_weight(max(state.seen, 1)) if plain else None
        out: list[tuple[str, float | None]] = []
        for prior in self.priors:
            if prior != own:
                out.append((candidate_label(prior), prior))
        if self.source and not (plain and (own == 1.0 or 1.0 in self.priors)):
            out.append((SafeCandidate.SOURCE.value, None))
        return out

    def choose(
        self,
        adapter: Adapter,
        state: AdapterState,
        network: nn.Module,
        inputs: torch.Tensor,
        logits: torch.Tensor,
        source_logits: torch.Tensor | None = None,
        own_is_source: bool = False,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The prediction to report for one case, and the statistics of the choice.

        Args:
            adapter: the adapter (its :meth:`~monai_tta.adapters.base.Adapter.candidate_forward` makes the
                adapted-state candidates).
            state: its state for ``network`` (after the case's update).
            network: the adapted network.
            inputs: the case, as the network sees it (padded).
            logits: the method's own prediction.
            source_logits: the source model's prediction when it was already computed (the safeguard's probe).
            own_is_source: the method's prediction is the source model's (the safeguard's fallback): it is recorded
                as such, and it is the ``source`` candidate too (no second forward; the tie goes to the method's).
        """
        activation = self.activation or getattr(adapter, "activation", "sigmoid")
        plain = adapter.plain_prediction and not state.params
        own_prior = 1.0 if own_is_source else adapter.norm.source_weight(max(state.seen, 1)) if plain else None
        labels = [SafeCandidate.METHOD.value]
        outputs = [logits]
        priors: list[float | None] = [own_prior]
        with torch.no_grad():
            if own_is_source:
                source_logits = logits
            for label, prior in self.candidates(adapter, state):
                if prior is None:
                    z = source_logits if source_logits is not None else source_forward(state, network, inputs)
                    prior = 1.0
                else:
                    with statistics_prior(state.norms, prior):
                        z = adapter.candidate_forward(state, inputs, network)
                labels.append(label)
                outputs.append(z)
                priors.append(prior)
            entropies = torch.stack([mean_entropy(z, activation) for z in outputs]).tolist()
        scores = entropies
        if self.per == SafePer.DOMAIN:
            n = int(state.extra.get(_COUNT, 0)) + 1
            state.extra[_COUNT] = n
            scores = []
            for label, h in zip(labels, entropies):
                total = float(state.extra.get(_SUM_PREFIX + label, 0.0)) + h
                state.extra[_SUM_PREFIX + label] = total
                scores.append(total / n)
        sources = [
            i
            for i, (label, prior) in enumerate(zip(labels, priors))
            if label == SafeCandidate.SOURCE or (i == 0 and own_is_source) or (plain and prior == 1.0)
        ]
        scores = [h - self.source_margin if i in sources else h for i, h in enumerate(scores)]
        best = min(range(len(scores)), key=lambda i: (scores[i], i))
        if priors[best] is None:  # the method's own prediction: the weight of its regime, when it has one
            regime = adapter.norm.source_weight(max(state.seen, 1))
            priors[best] = regime
        is_source = labels[best] == SafeCandidate.SOURCE or (best == 0 and own_is_source)
        stats = {
            StatKeys.SAFE_CHOICE: labels[best],
            StatKeys.SAFE_PRIOR: priors[best],
            StatKeys.SAFE_SOURCE: is_source or (plain and priors[best] == 1.0),
        }
        return outputs[best], stats
