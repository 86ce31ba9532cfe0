"""The guard protocol: objects attached to an adapter that watch each case and may change what happens to it.

An :class:`~monai_tta.adapters.Adapter` runs one case as: prepare the input, set the normalisation regime, take the
method's update, make the method's prediction. Its guards (``Adapter(guards=[...])``, run in the order listed) see the
case at fixed points, through one :class:`GuardContext`:

1. :meth:`Guard.before_update`: may hold the update back (:attr:`Verdict.HOLD`) and give the prediction to report
   instead of the method's (``ctx.logits``), e.g. the collapse safeguard's source-model fallback;
2. :meth:`Guard.after_update` (only when the update ran): may undo it (:attr:`Verdict.UNDO`: the adapter puts back the
   updated parameters and the optimizer state of before the update, bit for bit; a guard that may answer it sets
   :attr:`Guard.may_undo`) or return the adapter to the source state (:attr:`Verdict.RESET`);
3. :meth:`Guard.choose` (once the prediction is made): may replace the prediction (``ctx.logits``) and return the
   adapter to the source state (:attr:`Verdict.RESET`, before the next guard runs);
4. :meth:`Guard.on_reset`: the adapter returned to the source state (its setting's reset, a guard's, or ``reset()``);
5. :meth:`Guard.on_domain_change`: a new domain starts (``set_domain`` with another domain, or ``reset()``).

A guard is configuration and rules; what it remembers is its *state*, one typed object per adapted network
(:meth:`Guard.init_state`, kept with the adapter's state of that network), given to every call and saved by
:meth:`Guard.state_dict` / :meth:`Guard.load_state_dict` (plain values: ``torch.load(weights_only=True)`` reads them).
Guards write what they did into the case's statistics (``ctx.stats``, the adapter's ``last_stats``).

Guards do not import the adapters: everything they see of the adapter is in the context.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from monai.utils import StrEnum
from torch import nn

from monai_tta.guards.source import source_forward

__all__ = ["Verdict", "GuardContext", "Guard"]


class Verdict(StrEnum):
    """What a guard asks of the adapter.

    - ``pass``: nothing;
    - ``hold`` (from :meth:`Guard.before_update`): do not update on this case;
    - ``undo`` (from :meth:`Guard.after_update`): undo this case's update;
    - ``reset`` (from :meth:`Guard.after_update` or :meth:`Guard.choose`): return to the source state now
      (parameters, optimizer, method state; the guards' :meth:`Guard.on_reset`), without reseeding.
    """

    PASS = "pass"
    HOLD = "hold"
    UNDO = "undo"
    RESET = "reset"


@dataclass
class GuardContext:
    """What the guards see of one case (built by the adapter for each call).

    Attributes:
        network: the adapted network.
        inputs: the case as the network sees it (padded to its size multiple, or the padded volume).
        params: the parameters the method updates (their current, adapted values).
        snapshot: their source values.
        norms: the adaptive normalisation layers of the network.
        stats: the case's statistics (the adapter's ``last_stats`` after the call); guards add theirs.
        activation: how the network's logits are read, ``"sigmoid"`` or ``"softmax"`` (the adapter's).
        episodic: whether every case starts from the source state (the ``"episodic"`` setting).
        whole: whether the update sees the whole input (``False``: a volume adapted on patches).
        plain_prediction: whether the method's prediction is a plain forward of the network in its statistics regime
            (no updated weights, no prompt).
        forward: the adapted state's forward of a tensor without side effects, in the statistics the layers are set
            to (runs under ``no_grad``).
        statistics_weight: the weight on the source statistics of the method's regime for this case.
        updated: whether the method's update ran on this case (set by the adapter after it).
        logits: the prediction to report (``None`` until made, unless a guard gives one in ``before_update``).
        source_prediction: whether ``logits`` is the source model's prediction (set by the guard that put it there).
        scored: a case seen in parts (a volume): the parts the update saw, concatenated (the input the guards score
            predictions on: a sample of the volume); ``None``: the whole input is scored.
        predict_with: a case seen in parts: the whole case's prediction with statistics weight ``p`` on the adapted
            weights (``predict_with(p)``), or the source model's (``predict_with(None)``).
        pending: a case seen in parts: the method's own prediction of the whole case, made on first need
            (:meth:`prediction`), so that a guard that reports another prediction does not pay for it.
    """

    network: nn.Module
    inputs: torch.Tensor
    params: list[nn.Parameter]
    snapshot: list[torch.Tensor]
    norms: list[nn.Module]
    stats: dict[str, Any]
    activation: str
    episodic: bool
    whole: bool
    plain_prediction: bool
    forward: Callable[[torch.Tensor], torch.Tensor]
    statistics_weight: Callable[[], float]
    updated: bool = False
    logits: torch.Tensor | None = None
    source_prediction: bool = False
    scored: Callable[[], torch.Tensor] | None = None
    predict_with: Callable[[float | None], torch.Tensor] | None = None
    pending: Callable[[], torch.Tensor] | None = None
    _source_logits: torch.Tensor | None = field(default=None, repr=False)
    _cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def source_logits(self) -> torch.Tensor:
        """The source model's prediction of the case (source weights, source statistics; no gradient), computed on
        the first request and shared by every guard of the case (a volume: its sliding-window prediction)."""
        if self._source_logits is None:
            if self.predict_with is not None:
                self._source_logits = self.predict_with(None)
            else:
                self._source_logits = source_forward(self.network, self.inputs, self.params, self.snapshot, self.norms)
        return self._source_logits

    def report(self, make: Callable[[], torch.Tensor]) -> None:
        """Report the prediction ``make()``: made now for a whole input, on first need for a case seen in parts (a
        later guard may replace it without paying for it)."""
        if self.scored is None:
            self.logits = make()
        else:
            self.logits, self.pending = None, make

    def prediction(self) -> torch.Tensor:
        """The prediction to report: ``logits``, made now from ``pending`` when it is not made yet."""
        if self.logits is None and self.pending is not None:
            self.logits = self.pending()
        return self.logits

    def scored_inputs(self) -> torch.Tensor:
        """The input the guards score predictions on: the whole input, or the parts of a case seen in parts."""
        if self.scored is None:
            return self.inputs
        if "inputs" not in self._cache:
            self._cache["inputs"] = self.scored()
        return self._cache["inputs"]

    def source_scored(self) -> torch.Tensor:
        """The source model's prediction of :meth:`scored_inputs` (shared by the guards of the case)."""
        if self.scored is None:
            return self.source_logits()
        if "source" not in self._cache:
            x = self.scored_inputs()
            self._cache["source"] = source_forward(self.network, x, self.params, self.snapshot, self.norms)
        return self._cache["source"]

    def method_scored(self) -> torch.Tensor:
        """The adapted state's prediction of :meth:`scored_inputs` in the method's statistics regime (the whole
        input: the reported prediction itself)."""
        if self.scored is None:
            return self.prediction()
        if "method" not in self._cache:
            with torch.no_grad():
                self._cache["method"] = self.forward(self.scored_inputs())
        return self._cache["method"]


class Guard:
    """Base class of the guards: every hook does nothing, so a guard overrides only the points it watches.

    A guard that keeps no state leaves :meth:`init_state` as it is; one that keeps state returns a dataclass of plain
    values from it (the default :meth:`state_dict` / :meth:`load_state_dict` then save and restore its fields).
    """

    #: whether :meth:`after_update` may answer :attr:`Verdict.UNDO` (the adapter then copies the updated state
    #: before each update).
    may_undo: ClassVar[bool] = False
    #: whether the guard needs whole inputs (the adapter refuses a volume adapted on patches with it).
    whole_inputs_only: ClassVar[bool] = False

    def init_state(self) -> Any:
        """The guard's state for one network, at the source (``None``: no state)."""
        return None

    def before_update(self, ctx: GuardContext, state: Any) -> Verdict:
        """Before the method's update of a case (after the normalisation regime is set)."""
        return Verdict.PASS

    def after_update(self, ctx: GuardContext, state: Any) -> Verdict:
        """After the method's update of a case (before its prediction); ``ctx.stats`` holds the update's."""
        return Verdict.PASS

    def choose(self, ctx: GuardContext, state: Any) -> Verdict:
        """Once the prediction ``ctx.logits`` is made: a guard may replace it."""
        return Verdict.PASS

    def on_reset(self, state: Any) -> None:
        """The adapter returned to the source state: forget what belongs to the adapted state."""

    def on_domain_change(self, state: Any) -> None:
        """A new domain starts: forget what is kept per domain."""

    def state_dict(self, state: Any) -> dict[str, Any]:
        """The guard's state as plain values (the fields of a dataclass state; ``{}`` for no state)."""
        return {} if state is None else dataclasses.asdict(state)

    def load_state_dict(self, state: Any, values: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned into ``state`` (in place).

        Raises:
            ValueError: if ``values`` lacks a field of the state (saved by another guard).
        """
        if state is None:
            return
        missing = [f.name for f in dataclasses.fields(state) if f.name not in values]
        if missing:
            raise ValueError(f"{type(self).__name__}: the saved state lacks {missing}; it was saved by another guard.")
        for f in dataclasses.fields(state):
            setattr(state, f.name, copy.deepcopy(values[f.name]))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in sorted(vars(self).items()) if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"
