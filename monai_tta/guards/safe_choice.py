"""``safe``: a label-free choice of the reported prediction, shared by every method.

No published method has it. After a method's update, :class:`SafeChoice` compares the prediction the method reports
with a few *candidates* made on the same case, and returns the best one under a label-free signal (``signal``; by
default ``"mixes"``, the most stable across neighbouring statistics mixes, :mod:`monai_tta.guards.signals`):

- ``"method"``: the method's own prediction (its weights, its statistics regime, what it reports);
- ``"stats_<p>"``: the adapted state (the method's current weights, and VPTTA's prompt) with the normalisation
  statistics ``p * source + (1 - p) * image`` (``p`` in ``priors``: 1 the source statistics, 0 the image's own);
- ``"source"``: the source model (source weights, source statistics), when ``source`` is on.

The choice is made per case (``per="case"``: each case picks its own candidate) or per domain (``per="domain"``: the
candidate of best mean score over the cases of the current domain so far, this one included; the running sums
restart when the domain given to :meth:`~monai_tta.adapters.Adapter.set_domain` changes and at an explicit
``reset()``). The source's prediction (the source model, or the source statistics of a method without weights) is
preferred by a margin (``source_margin``, 0.01 of the entropy's range: another candidate must be clearly more
confident); other ties go to the earlier candidate in the order above. A candidate whose statistics depart further
from the source's needs more evidence (``mix_margin``, issue 18): its score is lowered by ``mix_margin * (1 - p)``
(``p`` its statistics weight, the method's own prediction that of its regime), so the image's own statistics must
beat the source by ``source_margin + mix_margin`` and the half-and-half mix by ``source_margin + mix_margin / 2``.
On a network without running statistics every candidate normalises alike and nothing is lowered.

When the source model wins, the method's *update* is still kept where it would not hurt (``step_margin``, issue 18:
"refuse only when it would hurt"): the adapted weights with the source model's statistics (``stats_1``; on a network
without running statistics, InstanceNorm, GroupNorm or LayerNorm, every statistics mix is the same forward, the
adapted weights with the case's own statistics as the source model uses them, and only ``stats_1`` is scored) differ
from the source model by the update's steps alone, like with like; if their score is at most ``step_margin`` (0.01)
worse, they are chosen and ``safe_step`` records it. So the margin refuses the *statistics* that do not clearly
fit, and the step is refused only when it moves the signal the wrong way by more than the margin. Without this rule
the source model, favoured by its margin, won every case on a network without running statistics and the method
never acted (a tiny step barely moves the entropy).

Why ``mixes`` by default: by the rule stated before measuring (``docs/reliability.md``: first no embedded domain or
site more than 0.5 Dice below source-only, then the highest overall) it won over the entropy, flip, consensus, source
agreement and dropout disagreement on three draws no rule was designed on (2D seeds 1 and 2, 3D seed 1); it was the
entropy until then. A prediction whose statistics fit the image barely moves when they move a little, and one made
with misfit statistics (the over-confident source statistics on a shifted image, the image's own on a content shift)
moves more. On a network without running statistics every mix is the same forward: ``mixes`` scores with the entropy
there.

What it changes, and what it does not: only the returned prediction. The method's update runs in its own regime,
as published, whatever is chosen (the adapted state keeps evolving by the method's rule: the choice never feeds back
into the update); the candidates' forwards run without gradient and leave the network, the statistics regime and the
method's state as they were. ``last_stats`` records the candidate kept (``safe_choice``), the statistics weight of
its prediction (``safe_prior``, the source's share: 1 for the source model), whether it is the source model
(``safe_source``) and whether the step rule kept the update (``safe_step``).

Cost: one forward without gradient per candidate besides the method's own (3 with the defaults), and for ``mixes``
the neighbouring mixes not among them (3 more: the adapted state at 0.75 and 0.25, the source model at 0.75; one or
two more when the method's regime is off the 0.25 grid, e.g. VPTTA's warm-up statistics in a stream;
``signal="flip"`` doubles the candidates' forwards instead). A volume adapted on patches
(:class:`~monai_tta.inferers.SlidingWindowAdapter`) scores its candidates on the update's patches (a sample of the
volume) and predicts the whole volume only with the chosen one.

The signal (``signal``, :mod:`monai_tta.guards.signals`): ``"mixes"`` (above), ``"entropy"``, ``"flip"``,
``"consensus"`` or ``"source"`` agreement; the rule that picked the default and the measurement are in
``docs/reliability.md``. The row of a case records the signal (``safe_signal``) and each candidate's value
(``safe_score_<label>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from monai.utils import look_up_option

from monai_tta.adapters.safe_options import SafeCandidate, SafePer
from monai_tta.adapters.stats import StatKeys
from monai_tta.guards.protocol import Guard, GuardContext, Verdict
from monai_tta.guards.signals import SafeSignal, mix_neighbours, signal_scores
from monai_tta.guards.source import ACTIVATIONS, source_forward, source_model
from monai_tta.norms import statistics_prior

__all__ = ["SafeChoice", "SafeChoiceState", "candidate_label"]


def candidate_label(prior: float) -> str:
    """The label of the candidate with statistics weight ``prior`` (e.g. ``"stats_0.5"``)."""
    return f"{SafeCandidate.STATS}_{float(prior):g}"


@dataclass
class SafeChoiceState:
    """What the per-domain choice remembers for one network: the cases of the domain so far and, per candidate
    label, the sum of their scores (the signal's values, higher better: minus the entropy for ``"entropy"``)."""

    cases: int = 0
    sums: dict[str, float] = field(default_factory=dict)


@dataclass
class SafeChoice(Guard):
    """The label-free choice of the reported prediction among the method's own, the adapted state with other
    statistics, and the source model (see the module docstring).

    Args:
        priors: statistics weights of the adapted-state candidates (1: source statistics, 0: the image's, between:
            a mix); may be empty.
        source: whether the source model's prediction is a candidate.
        per: ``"case"`` (each case chooses) or ``"domain"`` (one choice from the entropies of the domain's cases so
            far).
        activation: how the entropy is read from the logits, ``"sigmoid"`` or ``"softmax"``; ``None``: the
            adapter's ``activation``.
        source_margin: the source's prediction (the source model, or the source statistics of a method without
            weights) is kept unless another candidate's entropy is lower by more than this (entropies are in
            ``[0, 1]``): where they are within 1% of each other the sign of the difference is noise, and erring
            towards the source can only cost adaptation gains, never fall below it (the safeguard's margin too).
            The same margin applies to every signal (all are in ``[0, 1]``).
        signal: the label-free score of the candidates (:class:`~monai_tta.guards.signals.SafeSignal`:
            ``"mixes"``, the default, ``"entropy"``, ``"flip"``, ``"consensus"``, ``"source"``).
        step_margin: when the source model wins, the method's update is still accepted if the adapted weights with
            the source model's statistics (``stats_1``, or the method's own prediction where no such candidate is
            scored) score at most this much below it: like with like, only the update's steps
            differ, and a step that moves the signal by less than this is accepted (``None``: never; the source
            model is kept). Our choice: 0.01, the source margin (issue 18: "refuse only when it would hurt").
        mix_margin: the score of a candidate with statistics weight ``p`` is lowered by ``mix_margin * (1 - p)``
            before the choice (the source's statistics: nothing; the image's own: all of it), so the further a
            candidate's statistics depart from the source's, the clearer its evidence must be. Only on a network with
            source running statistics. Our choice: 0.01, the source margin (issue 18: with 0 a single image of the
            embedded ``lesions`` domain took the image's statistics on an entropy 0.011 better and lost 10.7 Dice;
            ``docs/reliability.md``).

    Raises:
        ValueError: for a prior outside ``[0, 1]``, an unknown ``per``, activation or signal, or a negative margin.
    """

    priors: Sequence[float] = (1.0, 0.5, 0.0)
    source: bool = True
    per: str = SafePer.CASE
    activation: str | None = None
    source_margin: float = 0.01
    signal: str = SafeSignal.MIXES
    step_margin: float | None = 0.01
    mix_margin: float = 0.01

    def __post_init__(self) -> None:
        self.signal = look_up_option(self.signal, SafeSignal)
        if self.step_margin is not None and self.step_margin < 0:
            raise ValueError(f"safe: step_margin must be None or >= 0, got {self.step_margin}.")
        if any(not 0.0 <= float(p) <= 1.0 for p in self.priors):
            raise ValueError(f"safe: priors must be weights in [0, 1], got {list(self.priors)}.")
        self.priors = tuple(dict.fromkeys(float(p) for p in self.priors))  # unique, in order
        self.per = look_up_option(self.per, SafePer)
        if self.activation is not None:
            self.activation = look_up_option(self.activation, ACTIVATIONS)
        if self.source_margin < 0:
            raise ValueError(f"safe: source_margin must be >= 0, got {self.source_margin}.")
        if self.mix_margin < 0:
            raise ValueError(f"safe: mix_margin must be >= 0, got {self.mix_margin}.")

    @classmethod
    def from_any(cls, value: SafeChoice | dict | bool | str | None) -> SafeChoice | None:
        """The ``safe=`` shorthand of the adapters: ``None``/``False``: off; ``True``: the defaults;
        ``"case"``/``"domain"``: the defaults chosen per case or per domain; a dict: its fields; a
        :class:`SafeChoice` as it is.

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

    def init_state(self) -> SafeChoiceState:
        return SafeChoiceState()

    def on_domain_change(self, state: SafeChoiceState) -> None:
        """Forget the per-domain entropies."""
        state.cases, state.sums = 0, {}

    def candidates(self, own: float | None = None, statistics: bool = True) -> list[tuple[str, float | None]]:
        """``(label, statistics weight)`` of each candidate besides the method's own, in the order of the choice.

        The source model's weight is ``None``. A candidate that is the method's own prediction, or another candidate,
        by construction is left out: when the method's prediction is a plain forward in the statistics of weight
        ``own`` (a method without updated weights, :attr:`~monai_tta.adapters.Adapter.plain_prediction`),
        ``stats_<own>`` is that same forward, and so is ``source`` when ``stats_1`` is there (or ``own`` is 1). On a
        network without source running statistics (``statistics=False``) every ``stats_<p>`` is the same forward (the
        weights only): the first is kept.

        Args:
            own: the statistics weight of the method's prediction when it is a plain forward, else ``None``.
            statistics: whether the network has source running statistics to mix.
        """
        plain = own is not None
        priors = self.priors if statistics else self.priors[:1]
        out: list[tuple[str, float | None]] = [(candidate_label(p), p) for p in priors if p != own]
        if self.source and not (plain and (own == 1.0 or 1.0 in self.priors)):
            out.append((SafeCandidate.SOURCE.value, None))
        return out

    def choose(self, ctx: GuardContext, state: SafeChoiceState) -> Verdict:
        """Replace the prediction by the best-scored candidate (the method's own prediction among them).

        When ``ctx.source_prediction`` (the safeguard's fallback) the method's prediction is the source model's: it is
        recorded as such, and it is the ``source`` candidate too (no second forward; the tie goes to the method's).
        A volume's candidates are scored on the update's patches (``ctx.scored_inputs()``) and only the chosen one
        predicts the whole volume.
        """
        activation = self.activation or ctx.activation
        plain = ctx.plain_prediction
        regime = ctx.statistics_weight()
        own_is_source = ctx.source_prediction
        own = regime if plain else None
        whole = ctx.scored is None
        has_stats = any(layer.has_source_stats for layer in ctx.norms)
        x = ctx.scored_inputs()
        flip = self.signal == SafeSignal.FLIP
        labels = [SafeCandidate.METHOD.value]
        priors: list[float | None] = [1.0 if own_is_source else own]
        with torch.no_grad():
            if whole:
                outputs = [ctx.prediction()]
            else:
                outputs = [ctx.source_scored() if own_is_source else ctx.method_scored()]
            for label, prior in self.candidates(own, statistics=has_stats):
                if prior is None:
                    z = outputs[0] if own_is_source else ctx.source_scored()
                    prior = 1.0
                elif not whole and not own_is_source and (prior == regime or not has_stats):
                    # a volume: the method's own regime (without running statistics: the same weights, the same forward)
                    z = outputs[0]
                else:
                    with statistics_prior(ctx.norms, prior):
                        z = ctx.forward(x)
                labels.append(label)
                outputs.append(z)
                priors.append(prior)
            flipped = self._flipped(ctx, x, labels, priors, own_is_source) if flip else None
            near = None
            if self.signal == SafeSignal.MIXES and has_stats:
                near = self._neighbours(ctx, x, labels, priors, outputs, own_is_source, regime)
            source_index = next((i for i, p in enumerate(priors) if labels[i] == SafeCandidate.SOURCE), None)
            if source_index is None and own_is_source:
                source_index = 0
            signal = self.signal
            if signal == SafeSignal.SOURCE and source_index is None:
                signal = SafeSignal.CONSENSUS  # no source candidate to agree with
            if signal == SafeSignal.MIXES and not has_stats:
                signal = SafeSignal.ENTROPY  # every statistics mix is the same forward: no path to be stable along
            values = signal_scores(signal, outputs, activation, source_index, flipped, near)
        scores = values
        if self.per == SafePer.DOMAIN:
            n = state.cases = state.cases + 1
            scores = []
            for label, v in zip(labels, values):
                total = float(state.sums.get(label, 0.0)) + v
                state.sums[label] = total
                scores.append(total / n)
        sources = [
            i
            for i, (label, prior) in enumerate(zip(labels, priors))
            if label == SafeCandidate.SOURCE or (i == 0 and own_is_source) or (plain and prior == 1.0)
        ]
        raw = scores
        if has_stats and self.mix_margin:
            weights = [regime if p is None else p for p in priors]
            scores = [
                h - self.mix_margin * (1.0 - (1.0 if i in sources else w))
                for i, (h, w) in enumerate(zip(scores, weights))
            ]
        scores = [h + self.source_margin if i in sources else h for i, h in enumerate(scores)]
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))
        step = None if plain or own_is_source else self._step_candidate(ctx, labels, priors, regime)
        accepted = (
            self.step_margin is not None
            and step is not None
            and labels[best] == SafeCandidate.SOURCE
            and raw[step] >= raw[best] - self.step_margin
        )
        if accepted:  # the update moves the signal by less than the margin: the adapted weights are kept
            best = step
        if priors[best] is None:  # the method's own prediction: the weight of its regime
            priors[best] = regime
        is_source = labels[best] == SafeCandidate.SOURCE or (best == 0 and own_is_source)
        if whole:
            ctx.logits = outputs[best]
        elif best != 0 and (has_stats or labels[best] == SafeCandidate.SOURCE):
            # a volume: only the chosen candidate predicts it whole (without running statistics a stats_<p> candidate
            # is the method's own prediction)
            chosen = priors[best]
            ctx.report(ctx.source_logits if labels[best] == SafeCandidate.SOURCE else lambda: ctx.predict_with(chosen))
        ctx.stats[StatKeys.SAFE_CHOICE] = labels[best]
        ctx.stats[StatKeys.SAFE_PRIOR] = priors[best]
        ctx.stats[StatKeys.SAFE_SOURCE] = is_source or (plain and priors[best] == 1.0)
        ctx.stats[StatKeys.SAFE_SIGNAL] = str(signal)
        ctx.stats[StatKeys.SAFE_STEP] = bool(accepted)
        for label, v in zip(labels, values):
            ctx.stats[f"{StatKeys.SAFE_SCORE}_{label}"] = v
        return Verdict.PASS

    @staticmethod
    def _step_candidate(ctx: GuardContext, labels: list[str], priors: list, regime: float) -> int | None:
        """The index of the adapted weights' prediction with the source model's statistics, if it is a candidate:
        ``stats_1``, else the method's own when its regime is the source statistics or the network has no running
        statistics (its layers then normalise with the case's own statistics in every candidate)."""
        index = next((i for i in range(1, len(labels)) if labels[i] != SafeCandidate.SOURCE and priors[i] == 1.0), None)
        if index is None and (regime == 1.0 or not any(layer.has_source_stats for layer in ctx.norms)):
            return 0
        return index

    @staticmethod
    def _neighbours(
        ctx: GuardContext,
        x: torch.Tensor,
        labels: list[str],
        priors: list,
        outputs: list[torch.Tensor],
        own_is_source: bool,
        regime: float,
    ) -> list[list[torch.Tensor]]:
        """Each candidate's neighbours on the path of statistics mixes (``signal="mixes"``): the same weights (the
        source model's for the source candidate, else the adapted state's) with the statistics weights of
        :func:`~monai_tta.guards.signals.mix_neighbours`. Forwards are shared, and the candidates' own are reused."""
        adapted = {
            p: z
            for i, (label, p, z) in enumerate(zip(labels, priors, outputs))
            if i > 0 and label != SafeCandidate.SOURCE
        }
        source: dict[float, torch.Tensor] = {}

        def adapted_at(q: float) -> torch.Tensor:
            if q not in adapted:
                with statistics_prior(ctx.norms, q):
                    adapted[q] = ctx.forward(x)
            return adapted[q]

        def source_at(q: float) -> torch.Tensor:
            if q == 1.0:
                return ctx.source_scored()
            if q not in source:
                with source_model(ctx.params, ctx.snapshot, ctx.norms), statistics_prior(ctx.norms, q):
                    source[q] = ctx.network(x)
            return source[q]

        out = []
        for i, (label, prior) in enumerate(zip(labels, priors)):
            is_source = label == SafeCandidate.SOURCE or (i == 0 and own_is_source)
            weight = 1.0 if is_source else (regime if prior is None else prior)
            at = source_at if is_source else adapted_at
            out.append([at(q) for q in mix_neighbours(weight)])
        return out

    def _flipped(
        self, ctx: GuardContext, x: torch.Tensor, labels: list[str], priors: list, own_is_source: bool
    ) -> list[torch.Tensor]:
        """Each candidate's prediction of ``x`` flipped along its last spatial axis, flipped back."""
        xf = torch.flip(x, dims=(-1,))
        out = []
        for i, (label, prior) in enumerate(zip(labels, priors)):
            if label == SafeCandidate.SOURCE or (i == 0 and own_is_source):
                z = source_forward(ctx.network, xf, ctx.params, ctx.snapshot, ctx.norms)
            elif i == 0:
                z = ctx.forward(xf)
            else:
                with statistics_prior(ctx.norms, prior):
                    z = ctx.forward(xf)
            out.append(torch.flip(z, dims=(-1,)))
        return out
