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
(:meth:`~monai_tta.adapters.base.Adapter.set_domain`) or an explicit reset also ends it and restarts the average.
The case on which the gap crosses already reports the prediction of the new state (both were computed).
``last_stats`` records ``safeguard_gap`` (the average, on probed cases) and ``safeguard_fallback``.
Why entropy: the prediction whose statistics fit the image is the more confident one on this data (the same reason
as ``safe``, :mod:`monai_tta.adapters.safe_choice`); it needs no label and no extra view. The margin (-0.01: the
adapted model keeps adapting only while its predictions are *clearly* the more confident ones; where the two
entropies are within 1% of their range, as on the embedded ``blur`` domain, the sign of the difference is noise and
the source is kept, which can only cost adaptation gains, never fall below the source), the average's momentum (0.5:
a domain's first cases decide) and the probing of every case are our choices; ``probe_every`` trades the extra
forward for reaction time. Whole inputs only (a volume adapted on patches is not probed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from monai_tta.adapters.safe_choice import mean_entropy
from monai_tta.adapters.stats import StatKeys

if TYPE_CHECKING:
    from monai_tta.adapters.base import AdapterState

__all__ = ["CollapseSafeguard"]

# keys of the safeguard's numbers in ``AdapterState.extra`` (plain floats: adapter checkpoints keep them)
_N, _NORM0, _REF_ENT, _REF_AREA, _ENT, _AREA = (
    "safeguard_n",
    "safeguard_norm0",
    "safeguard_ref_entropy",
    "safeguard_ref_area",
    "safeguard_entropy",
    "safeguard_area",
)
# the source-gap probe's numbers (kept across a fired reset; cleared by a new domain or an explicit reset)
_GAP, _PROBES, _FALLBACK = "safeguard_gap", "safeguard_probes", "safeguard_fallback"


@dataclass
class CollapseSafeguard:
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

    @staticmethod
    def clear(state: AdapterState) -> None:
        """Forget the references (after a reset)."""
        for key in (_N, _REF_ENT, _REF_AREA, _ENT, _AREA):
            state.extra.pop(key, None)

    @staticmethod
    def clear_gap(state: AdapterState) -> None:
        """Forget the source-gap average and end a fallback (a new domain, or an explicit reset)."""
        for key in (_GAP, _PROBES, _FALLBACK):
            state.extra.pop(key, None)

    @staticmethod
    def in_fallback(state: AdapterState) -> bool:
        """Whether the adapter is in the source state after the source-gap signal fired."""
        return bool(state.extra.get(_FALLBACK, False))

    def probe_due(self, state: AdapterState) -> bool:
        """Whether this case is probed (counts the case)."""
        if self.source_gap is None:
            return False
        n = int(state.extra.get(_PROBES, 0))
        state.extra[_PROBES] = n + 1
        return n % self.probe_every == 0

    def check_gap(self, state: AdapterState, adapted_entropy: float, source_entropy: float) -> bool:
        """Update the source-gap average with one probed case; whether the adapter is now in the fallback.

        Args:
            state: the adapter's state.
            adapted_entropy: mean entropy of the adapted prediction (in the fallback: the method's statistics regime
                on the source weights).
            source_entropy: mean entropy of the source model's prediction.
        """
        d = float(adapted_entropy) - float(source_entropy)
        gap = state.extra.get(_GAP)
        gap = d if gap is None else self.gap_momentum * float(gap) + (1.0 - self.gap_momentum) * d
        state.extra[_GAP] = gap
        state.extra[_FALLBACK] = bool(gap > self.source_gap)
        return state.extra[_FALLBACK]

    @staticmethod
    def gap(state: AdapterState) -> float | None:
        """The current source-gap average (``None`` before the first probe)."""
        value = state.extra.get(_GAP)
        return None if value is None else float(value)

    @staticmethod
    def _signals(logits: torch.Tensor, activation: str) -> tuple[torch.Tensor, torch.Tensor]:
        z = logits.detach().float()
        if activation == "softmax" and z.shape[1] > 1:
            return mean_entropy(z, "softmax"), (z.argmax(1) > 0).float().mean()
        return mean_entropy(z, "sigmoid"), (torch.sigmoid(z) > 0.5).float().mean()

    def check(self, state: AdapterState, logits: torch.Tensor, activation: str = "sigmoid") -> str | None:
        """Update the signals with the prediction of one case; the name of the signal that fired, or ``None``."""
        ent, area = self._signals(logits, activation)
        values = [ent, area]
        if self.max_drift is not None and state.params:
            pairs = zip(state.params, state.snapshot)
            values.append(sum((p.detach().float() - s.float()).pow(2).sum() for p, s in pairs))
            if _NORM0 not in state.extra:
                state.extra[_NORM0] = float(sum(s.float().pow(2).sum() for s in state.snapshot))
        numbers = torch.stack([v.reshape(()).float() for v in values]).tolist()
        ent_v, area_v = numbers[0], numbers[1]
        n = int(state.extra.get(_N, 0)) + 1
        state.extra[_N] = n
        m = self.momentum
        state.extra[_ENT] = ent_v if n == 1 else m * state.extra[_ENT] + (1 - m) * ent_v
        state.extra[_AREA] = area_v if n == 1 else m * state.extra[_AREA] + (1 - m) * area_v
        if n <= self.warmup:  # references: the mean over the first cases since the reset
            state.extra[_REF_ENT] = ((n - 1) * state.extra.get(_REF_ENT, 0.0) + ent_v) / n
            state.extra[_REF_AREA] = ((n - 1) * state.extra.get(_REF_AREA, 0.0) + area_v) / n
        if len(numbers) > 2 and state.extra[_NORM0] > 0:
            if math.sqrt(numbers[2] / state.extra[_NORM0]) > self.max_drift or not math.isfinite(numbers[2]):
                return "drift"
        if n <= self.warmup:
            return None
        if self.entropy_ratio is not None and state.extra[_ENT] < self.entropy_ratio * state.extra[_REF_ENT]:
            return "entropy"
        if self.area_ratio is not None:
            ref = max(state.extra[_REF_AREA], self.min_area)
            if not ref / self.area_ratio <= max(state.extra[_AREA], 0.0) <= ref * self.area_ratio:
                return "area"
        return None

    def record(self, stats: dict[str, Any], signal: str | None) -> None:
        """Put the outcome in an adapter's statistics."""
        stats[StatKeys.SAFEGUARD] = signal is not None
        if signal is not None:
            stats[StatKeys.SAFEGUARD_SIGNAL] = signal
