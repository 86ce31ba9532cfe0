"""Collapse safeguard: label-free signs that an adapted model is running away, and a return to the source state.

After each case the adapter reports, :class:`CollapseSafeguard` looks at three signals that need no label:

- **parameter drift**: ``||theta - theta_source|| / ||theta_source||`` over the updated parameters;
- **entropy collapse**: the mean per-pixel entropy of the prediction (normalised to ``[0, 1]``), as a moving average,
  against its value over the first cases since the last reset (a model that becomes certain of everything is the
  classic collapse of entropy minimisation);
- **area jump**: the predicted foreground fraction, as a moving average, against its value over the first cases
  since the last reset (a model that starts predicting everything or nothing).

When one passes its threshold the adapter returns to the source state (parameters, optimizer, method state), and
``last_stats`` records ``safeguard`` (``True``) and ``safeguard_signal`` (which one). The references are taken again
after every reset. The thresholds are our choice (no paper sets them): loose enough never to fire on the embedded
streams of the benchmark when nothing runs away (``docs/benchmarks/safeguard/results.md`` says how often each
method's safeguard fired).
The signals cost one reduction of the prediction and one of the parameters, and one device-to-host transfer.

A fourth signal sees what the three above cannot: an adapted model that is steadily *worse than the source model*
without running away (on the embedded data, per-image statistics cost 4 to 7 Dice points on two domains while nothing
drifts). **Source gap** (``source_gap``, on by default): on every ``probe_every``-th case the source model's
prediction (source weights, source statistics: one forward without gradient) is compared with the adapted one by
their mean per-pixel entropies; ``gap`` is a moving average of ``H(adapted) - H(source)``, and while it is above
``source_gap`` (the margin) the adapted model is judged worse than the source. When it crosses, the safeguard fires
(``safeguard_signal="source_gap"``) and the adapter *falls back to the source state*: parameters, optimizer and method
state back to the source, and from this case on the source model predicts (source statistics, no update) while the
probes go on, now comparing the method's statistics regime on the source weights with the source model. When the gap
falls back to the margin or below the fallback ends and the method adapts again from the source state; a new domain
(:meth:`~monai_tta.adapters.Adapter.set_domain`) or an explicit reset also ends it and restarts the average.
The case on which the gap crosses already reports the prediction of the new state (both were computed).
``last_stats`` records ``safeguard_gap`` (the average, on probed cases) and ``safeguard_fallback``.
Why entropy: the prediction whose statistics fit the image is the more confident one on this data (the same reason
as ``safe``, :mod:`monai_tta.guards.safe_choice`); it needs no label and no extra view. The margin (-0.01: the
adapted model keeps adapting only while its predictions are *clearly* the more confident ones; where the two
entropies are within 1% of their range, as on the embedded ``blur`` domain, the sign of the difference is noise and
the source is kept, which can only cost adaptation gains, never fall below the source), the average's momentum (0.5:
a domain's first cases decide) and the probing of every case are our choices; ``probe_every`` trades the extra
forward for reaction time. A volume adapted on patches is probed on those patches. Inactive in the
``"episodic"`` setting (every case starts from the source state).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from monai_tta.adapters.stats import StatKeys
from monai_tta.guards.protocol import Guard, GuardContext, Verdict
from monai_tta.guards.source import mean_entropy

__all__ = ["CollapseSafeguard", "CollapseState"]


@dataclass
class CollapseState:
    """What the collapse safeguard remembers for one network (plain numbers).

    Attributes:
        cases: cases checked since the last reset.
        source_norm: ``||theta_source||^2`` over the updated parameters (computed once).
        ref_entropy: the entropy reference (mean over the first ``warmup`` cases since the reset).
        ref_area: the foreground-fraction reference.
        entropy: the entropy moving average.
        area: the foreground-fraction moving average.
        gap: the source-gap moving average (``None`` before the first probe of the domain).
        probes: cases counted for the probe since the domain started.
        fallback: whether the source model predicts (the source gap fired and has not cleared).
    """

    cases: int = 0
    source_norm: float | None = None
    ref_entropy: float = 0.0
    ref_area: float = 0.0
    entropy: float = 0.0
    area: float = 0.0
    gap: float | None = None
    probes: int = 0
    fallback: bool = False


@dataclass
class CollapseSafeguard(Guard):
    """Detect a drifting model from label-free signals and return it to the source state.

    Args:
        max_drift: largest relative parameter drift ``||theta - theta_0|| / ||theta_0||`` (``None``: not checked).
        entropy_ratio: fire when the entropy average falls below this fraction of its reference (``None``: off).
        area_ratio: fire when the foreground-fraction average leaves ``[ref / area_ratio, ref * area_ratio]``
            (``None``: off); references below ``min_area`` are raised to it (a domain with tiny objects).
        warmup: cases after a reset that set the references (no check during them).
        momentum: weight of the past in the moving averages.
        min_area: floor of the area reference.
        source_gap: margin of the source-gap signal: fall back to the source state while the moving average of
            ``H(adapted) - H(source)`` is above it (``None``: off, no probe).
        gap_momentum: weight of the past in that moving average.
        probe_every: probe one case in this many (the first case of a domain is always probed).
        step_margin: on a network without source running statistics, the source gap fires only when the adapted
            entropy exceeds the source's by more than this (like with like: the same statistics, only the update
            differs; a step that moves the entropy by less is accepted). Our choice: the 1% of ``source_gap``.

    Raises:
        ValueError: for a threshold out of range.
    """

    max_drift: float | None = 0.5
    entropy_ratio: float | None = 0.25
    area_ratio: float | None = 4.0
    warmup: int = 5
    momentum: float = 0.8
    min_area: float = 0.005
    source_gap: float | None = -0.01
    gap_momentum: float = 0.5
    probe_every: int = 1
    step_margin: float = 0.01

    def __post_init__(self) -> None:
        if self.max_drift is not None and self.max_drift <= 0:
            raise ValueError(f"max_drift must be > 0, got {self.max_drift}.")
        if self.entropy_ratio is not None and not 0 < self.entropy_ratio < 1:
            raise ValueError(f"entropy_ratio must be in (0, 1), got {self.entropy_ratio}.")
        if self.area_ratio is not None and self.area_ratio <= 1:
            raise ValueError(f"area_ratio must be > 1, got {self.area_ratio}.")
        if self.warmup < 1 or not 0 <= self.momentum < 1:
            raise ValueError(f"warmup must be >= 1 and momentum in [0, 1), got {self.warmup}, {self.momentum}.")
        if self.probe_every < 1 or not 0 <= self.gap_momentum < 1:
            raise ValueError(
                f"probe_every must be >= 1 and gap_momentum in [0, 1), got {self.probe_every}, {self.gap_momentum}."
            )

    @classmethod
    def from_any(cls, value: CollapseSafeguard | dict | bool | None, default: bool) -> CollapseSafeguard | None:
        """The ``safeguard=`` shorthand of the adapters: ``None`` the defaults if ``default`` (a method with an
        optimizer) else off; ``True`` the defaults; ``False`` off; a dict its fields; a safeguard as it is."""
        if value is None or value is True:
            return cls() if (default or value) else None
        if isinstance(value, dict):
            return cls(**value)
        return value or None

    # ----------------------------------------------------------------- the protocol
    def init_state(self) -> CollapseState:
        return CollapseState()

    def on_reset(self, state: CollapseState) -> None:
        """Forget the references (they are taken again from the next cases); the source gap is kept."""
        state.cases, state.ref_entropy, state.ref_area, state.entropy, state.area = 0, 0.0, 0.0, 0.0, 0.0

    def on_domain_change(self, state: CollapseState) -> None:
        """Forget the source-gap average and end a fallback."""
        state.gap, state.probes, state.fallback = None, 0, False

    def _probing(self, ctx: GuardContext) -> bool:
        return not ctx.episodic and self.source_gap is not None

    def before_update(self, ctx: GuardContext, state: CollapseState) -> Verdict:
        """In the fallback: no update, the source model predicts."""
        if not (self._probing(ctx) and state.fallback):
            return Verdict.PASS
        ctx.report(ctx.source_logits)
        return Verdict.HOLD

    def choose(self, ctx: GuardContext, state: CollapseState) -> Verdict:
        """Probe the source gap (may replace the prediction), check the signals; ``reset`` when one fired."""
        if ctx.episodic:
            return Verdict.PASS
        probing = self._probing(ctx)
        fallback = probing and state.fallback
        signal = None
        if probing and self.probe_due(state):
            signal = self._probe(ctx, state, fallback)
            ctx.stats[StatKeys.SAFEGUARD_GAP] = state.gap
        if signal is None and ctx.updated:
            signal = self.check(state, ctx.method_scored(), ctx.activation, ctx.params, ctx.snapshot)
        ctx.stats[StatKeys.SAFEGUARD] = signal is not None
        if signal is not None:
            ctx.stats[StatKeys.SAFEGUARD_SIGNAL] = signal
        if probing:
            ctx.stats[StatKeys.SAFEGUARD_FALLBACK] = ctx.source_prediction = state.fallback
        return Verdict.PASS if signal is None else Verdict.RESET

    # ----------------------------------------------------------------- the signals
    def probe_due(self, state: CollapseState) -> bool:
        """Whether this case is probed (counts the case)."""
        if self.source_gap is None:
            return False
        n = state.probes
        state.probes = n + 1
        return n % self.probe_every == 0

    def _probe(self, ctx: GuardContext, state: CollapseState, fallback: bool) -> str | None:
        """One probe: the prediction to report (in ``ctx.logits``), and ``"source_gap"`` when the gap fired. A volume
        is probed on the update's patches (``ctx.scored_inputs()``)."""
        whole = ctx.scored is None
        with torch.no_grad():
            source = ctx.source_scored()
            # in the fallback: the method's statistics regime on the source weights, against the source model
            adapted = ctx.forward(ctx.scored_inputs()) if fallback else ctx.method_scored()
            h = torch.stack([mean_entropy(adapted, ctx.activation), mean_entropy(source, ctx.activation)]).tolist()
        now = self.check_gap(state, h[0], h[1], running_stats=any(n.has_source_stats for n in ctx.norms))
        if now and not fallback:
            ctx.report(ctx.source_logits)
            return "source_gap"
        if fallback and not now:  # the gap cleared: the method adapts again from the next case
            ctx.report((lambda: adapted) if whole else (lambda: ctx.predict_with(ctx.statistics_weight())))
        return None

    def check_gap(
        self, state: CollapseState, adapted_entropy: float, source_entropy: float, running_stats: bool = True
    ) -> bool:
        """Update the source-gap average with one probed case; whether the adapter is now in the fallback.

        Args:
            state: the safeguard's state.
            adapted_entropy: mean entropy of the adapted prediction (in the fallback: the method's statistics regime
                on the source weights).
            source_entropy: mean entropy of the source model's prediction.
            running_stats: whether the network has source running statistics. Without them (InstanceNorm,
                GroupNorm, LayerNorm) both predictions use the same statistics and differ only by the update's
                steps, which move the entropy little: the gap then fires only when the adapted entropy is above the
                source's by more than ``step_margin`` (a step that moves it less is accepted).
        """
        d = float(adapted_entropy) - float(source_entropy)
        gap = d if state.gap is None else self.gap_momentum * float(state.gap) + (1.0 - self.gap_momentum) * d
        state.gap = gap
        threshold = self.source_gap if running_stats else max(self.source_gap, self.step_margin)
        state.fallback = bool(gap > threshold)
        return state.fallback

    @staticmethod
    def _signals(logits: torch.Tensor, activation: str) -> tuple[torch.Tensor, torch.Tensor]:
        z = logits.detach().float()
        if activation == "softmax" and z.shape[1] > 1:
            return mean_entropy(z, "softmax"), (z.argmax(1) > 0).float().mean()
        return mean_entropy(z, "sigmoid"), (torch.sigmoid(z) > 0.5).float().mean()

    def check(
        self,
        state: CollapseState,
        logits: torch.Tensor,
        activation: str = "sigmoid",
        params: Sequence[torch.Tensor] = (),
        snapshot: Sequence[torch.Tensor] = (),
    ) -> str | None:
        """Update the signals with the prediction of one case; the name of the signal that fired, or ``None``.

        Args:
            state: the safeguard's state.
            logits: the case's prediction.
            activation: how ``logits`` are read.
            params: the updated parameters (the drift is checked when there are some).
            snapshot: their source values.
        """
        ent, area = self._signals(logits, activation)
        values = [ent, area]
        if self.max_drift is not None and params:
            values.append(sum((p.detach().float() - s.float()).pow(2).sum() for p, s in zip(params, snapshot)))
            if state.source_norm is None:
                state.source_norm = float(sum(s.float().pow(2).sum() for s in snapshot))
        numbers = torch.stack([v.reshape(()).float() for v in values]).tolist()
        ent_v, area_v = numbers[0], numbers[1]
        n = state.cases = state.cases + 1
        m = self.momentum
        state.entropy = ent_v if n == 1 else m * state.entropy + (1 - m) * ent_v
        state.area = area_v if n == 1 else m * state.area + (1 - m) * area_v
        if n <= self.warmup:  # references: the mean over the first cases since the reset
            state.ref_entropy = ((n - 1) * state.ref_entropy + ent_v) / n
            state.ref_area = ((n - 1) * state.ref_area + area_v) / n
        if len(numbers) > 2 and state.source_norm > 0:
            if math.sqrt(numbers[2] / state.source_norm) > self.max_drift or not math.isfinite(numbers[2]):
                return "drift"
        if n <= self.warmup:
            return None
        if self.entropy_ratio is not None and state.entropy < self.entropy_ratio * state.ref_entropy:
            return "entropy"
        if self.area_ratio is not None:
            ref = max(state.ref_area, self.min_area)
            if not ref / self.area_ratio <= max(state.area, 0.0) <= ref * self.area_ratio:
                return "area"
        return None
