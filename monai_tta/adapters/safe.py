"""``SafeNorm``: the no-gradient adapter with the safe-choice guard, a choice of normalisation statistics per case
(or domain).

:class:`SafeNorm` is source inference with the :class:`~monai_tta.guards.SafeChoice` guard: for each case it predicts
with each candidate statistics (by default the source running statistics, a half-and-half mix and the image's own
statistics) and reports the best under the label-free signal of ``safe`` (by default ``"mixes"``: the prediction
most stable across neighbouring statistics mixes; ``signal="entropy"``: the lowest mean per-pixel entropy; the
source statistics are preferred by the guard's margins). It is the no-gradient case of the ``safe`` option every
method takes (``Tent(safe=True)``, ``GraTa(safe="domain")``, ...), which also offers the source model's prediction
as a candidate. Cost: one forward per candidate and two for the neighbouring mixes, no gradient.

Measured on the embedded data: ``docs/reliability.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai_tta.adapters.safe_options import SafePer
from monai_tta.adapters.source_only import SourceOnly
from monai_tta.guards import SafeChoice
from monai_tta.norms.policy import NormRegime

__all__ = ["SafeNorm"]


class SafeNorm(SourceOnly):
    """Per case (or per domain), the label-free choice of the prediction among candidate normalisation statistics.

    Args:
        priors: the candidates, as weights on the source statistics (1: source, 0: the image's own, between: a mix);
            the first one is the regime of the adapter's own prediction, the others are ``safe`` candidates.
        activation: ``"sigmoid"`` or ``"softmax"`` (how the entropy is read from the logits).
        per: ``"case"`` or ``"domain"`` (see :class:`~monai_tta.guards.SafeChoice`).
        signal: the label-free score of the candidates (:class:`~monai_tta.guards.signals.SafeSignal`; ``None``: the
            default of :class:`~monai_tta.guards.SafeChoice`).
        kwargs: :class:`~monai_tta.adapters.base.Adapter` arguments (not ``norm``, ``safe`` nor ``guards``:
            ``priors`` sets them).

    Raises:
        ValueError: for no candidate, a prior outside ``[0, 1]``, an unknown activation or ``per``, or ``norm`` /
            ``safe`` / ``guards`` given.
    """

    requires_batch_norm = True

    def __init__(
        self,
        priors: Sequence[float] = (1.0, 0.5, 0.0),
        activation: str = "sigmoid",
        per: str = SafePer.CASE,
        signal: str | None = None,
        **kwargs: Any,
    ) -> None:
        if not priors or any(not 0.0 <= float(p) <= 1.0 for p in priors):
            raise ValueError(f"priors must be a non-empty list of weights in [0, 1], got {list(priors)}.")
        for name in ("norm", "safe", "guards"):
            if kwargs.get(name) is not None:
                raise ValueError(f"SafeNorm sets {name} from priors; do not pass {name}.")
            kwargs.pop(name, None)
        self.priors = tuple(float(p) for p in priors)
        options = {} if signal is None else {"signal": signal}
        choice = SafeChoice(priors=self.priors[1:], source=True, per=per, activation=activation, **options)
        norm = {"regime": NormRegime.MIX.value, "prior": self.priors[0]}
        super().__init__(norm=norm, activation=activation, safe=choice, **kwargs)
