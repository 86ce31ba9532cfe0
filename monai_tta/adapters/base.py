"""The adapter contract: a MONAI ``Inferer`` that adapts the network to each incoming case, then predicts.

``adapter(inputs, network) -> logits``. Inside the call the adapter enables gradients (MONAI's evaluator and MONAI
Label call inferers under ``no_grad``), puts the normalisation layers in the regime of the method, takes its update
step(s) on its own parameter set and returns the prediction that the method reports. Its state (source snapshot,
optimizer, step count, its guards' states) is kept per network (:class:`~monai_tta.adapters.state.AdapterState`);
:meth:`Adapter.reset` returns to the source state.

Guards (:mod:`monai_tta.guards`) watch each case through one small protocol: the non-finite rollback, the collapse
safeguard and the safe choice are guards, listed in ``guards=[...]`` (or built by the ``safeguard=`` / ``safe=``
shorthands); the adapter runs them and applies their verdicts.

Any network: the parameters a method updates are one shared option, ``params`` (:mod:`monai_tta.params`); a network
on which that set is empty raises a clear error on the first call. Any size: a whole input is padded to the size
multiple the network needs and cropped back (:class:`~monai_tta.adapters.cases.WholeCase`); a volume larger than the
network's patch goes through :class:`~monai_tta.inferers.SlidingWindowAdapter`, which passes its own
:class:`~monai_tta.adapters.cases.Case` plan to :meth:`Adapter.adapt_and_predict`.

Serving (MONAI Label builds the bundle's ``inferer`` once and calls it on one cached network for every request): a call
holds the adapter's lock, so concurrent requests never interleave their updates; in the ``"episodic"`` setting every
call starts from the source state and from the seeded random generator, so the same image gives the same prediction
whatever came before. ``"continual"`` serving (the state carries over between requests) is an explicit opt-in.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import look_up_option
from torch import nn

from monai_tta.adapters.cases import Case, CaseParts, WholeCase
from monai_tta.adapters.optimizers import OPTIMIZERS, build_optimizer, set_lr
from monai_tta.adapters.settings import ResetSchedule, Setting
from monai_tta.adapters.state import AdapterState
from monai_tta.adapters.stats import StatKeys
from monai_tta.gradients import only_requires_grad
from monai_tta.guards import ACTIVATIONS, CollapseSafeguard, Guard, GuardContext, SafeChoice, Verdict, resolve_guards
from monai_tta.networks.inputs import check_network_input
from monai_tta.norms import AdaptiveBatchNorm, NormPolicy, convert_norms
from monai_tta.params import ParamSelection, nothing_to_update_message, select_parameters

logger = logging.getLogger(__name__)


__all__ = ["Adapter", "AdapterState", "build_optimizer", "set_lr"]


class Adapter(Inferer):
    """Base class of every adaptation method.

    A subclass implements :meth:`adapt` (the update of one case) and, when needed, :meth:`select_params`,
    :meth:`init_state`, :meth:`reset_state`, :meth:`predict` and (for state beyond parameters, optimizer, counters
    and plain values) :meth:`method_state_dict` / :meth:`load_method_state_dict`. Everything else (gradient mode,
    normalisation regime, per-network state, resets, guards, input protection, statistics) is shared here. An
    :meth:`adapt` that takes its gradients with ``self.case_parts(inputs).grads(loss_of_part, params)``
    (:class:`~monai_tta.adapters.cases.CaseParts`) works unchanged on whole inputs and on the patches of a volume; a
    method that cannot sets :attr:`supports_patches`.

    Args:
        setting: when to return to the source state: ``"episodic"`` (before each case, the seeded random generator
            included), ``"domain"`` (when the domain given to :meth:`set_domain` changes; while no domain has been
            given, before each input that names its case (a ``MetaTensor`` with a file name, as the Model Zoo's
            evaluators and MONAI Label give): such a caller gets per-patient adaptation, never weights carried from
            one patient to the next; plain tensors without a domain are one stream) or ``"continual"`` (never: the
            explicit opt-in to carry adaptation over).
        norm: normalisation regime (a :class:`~monai_tta.norms.NormPolicy`, a regime name or a dict of its fields);
            ``None`` gives the method's published regime.
        optimizer: ``"adam"`` or ``"sgd"``.
        lr: base learning rate.
        betas: Adam's betas.
        momentum: SGD momentum.
        weight_decay: weight decay.
        steps: update steps per case.
        seed: seed of the adapter's random generator (augmentations); ``None`` draws from torch's global generator.
        params: the parameters the method updates (:mod:`monai_tta.params`): ``"norm"`` (affine parameters of every
            normalisation layer: BatchNorm, SyncBatchNorm, InstanceNorm with affine, GroupNorm, LayerNorm), ``"bn"``
            (BatchNorm only), ``"all"``, or a callable ``network -> parameters``; ``None`` gives the method's
            default (``"norm"`` for the entropy methods, which on a BatchNorm network is exactly the published BN
            affine set). Methods without network parameters (source-only, NormAdapt, VPTTA) do not take it.
        divisor: the size multiple a whole input is padded to (an int or one per spatial axis); ``None`` reads it
            from the network (:func:`~monai_tta.padding.network_divisor`). The output is cropped back.
        activation: how the network's logits are read, by the method's objective (where it has one) and by the
            guards: ``"sigmoid"`` (independent channels, multi-label) or ``"softmax"`` (exclusive classes).
        guards: the guards, in the order they run (:mod:`monai_tta.guards`; ``None`` entries are left out);
            ``None``: the defaults, built from the shorthands: :class:`~monai_tta.guards.NonFiniteRollback` (always),
            :class:`~monai_tta.guards.CollapseSafeguard` from ``safeguard``, :class:`~monai_tta.guards.SafeChoice`
            from ``safe``. A shorthand given with ``guards`` changes the guard of its kind in the list
            (:func:`~monai_tta.guards.resolve_guards`).
        safeguard: the collapse safeguard (:meth:`~monai_tta.guards.CollapseSafeguard.from_any`): ``None`` on for the
            methods with an optimizer, off for the others; ``True`` on; ``False`` off; a dict: its fields.
        safe: the label-free choice of the reported prediction (:meth:`~monai_tta.guards.SafeChoice.from_any`):
            ``"case"``, ``"domain"``, ``True`` (per case) or a dict of its fields; ``None``/``False``: off (default).

    Raises:
        ValueError: for an unknown setting, optimizer, parameter set or activation (or one the method's objective
            does not support) or ``steps < 0``.
        TypeError: for a guard that is not a :class:`~monai_tta.guards.Guard`.
    """

    #: regime used when ``norm`` is ``None``.
    default_norm: str = "image"
    #: whether the method updates parameters with an optimizer.
    uses_optimizer: bool = True
    #: parameter set used when ``params`` is ``None``.
    default_params: ParamSelection = "norm"
    #: whether the method needs BatchNorm layers with source running statistics (NormAdapt, VPTTA, DyNA's day).
    requires_batch_norm: bool = False
    #: whether the method can adapt a volume on patches (:class:`~monai_tta.inferers.SlidingWindowAdapter`).
    supports_patches: bool = True
    #: whether the reported prediction is a plain forward of the network in the policy's statistics (no update, no
    #: prompt): then ``safe`` knows which of its candidates are that same forward and skips them.
    plain_prediction: bool = False
    #: the activations the method's objective is defined for.
    activations: tuple[str, ...] = ACTIVATIONS

    def __init__(
        self,
        setting: str = Setting.DOMAIN,
        norm: NormPolicy | str | dict | None = None,
        optimizer: str = "adam",
        lr: float = 1e-4,
        betas: Sequence[float] = (0.9, 0.999),
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        steps: int = 1,
        seed: int | None = 0,
        params: ParamSelection | None = None,
        divisor: int | Sequence[int] | None = None,
        activation: str = "sigmoid",
        guards: Sequence[Guard | None] | None = None,
        safeguard: CollapseSafeguard | dict | bool | None = None,
        safe: SafeChoice | dict | bool | str | None = None,
    ) -> None:
        super().__init__()
        self.activation = look_up_option(activation, ACTIVATIONS)
        if self.activation not in self.activations:
            raise ValueError(
                f"{type(self).__name__}'s objective is defined for {', '.join(self.activations)} outputs, "
                f"got activation={activation!r}; use a method that supports it."
            )
        self.guards: tuple[Guard, ...] = resolve_guards(guards, safeguard, safe, self.uses_optimizer)
        if isinstance(params, str):
            select_parameters(nn.Module(), params)  # validates the name now rather than at the first case
        self.params = params
        self.divisor = divisor
        self.setting = look_up_option(setting, Setting)
        self.norm = NormPolicy.from_any(norm, default=self.default_norm)
        self.optimizer_name = look_up_option(optimizer.lower(), OPTIMIZERS)
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}.")
        self.lr, self.betas, self.momentum, self.weight_decay = lr, tuple(betas), momentum, weight_decay
        self.steps = steps
        self.seed = seed
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()
        self._states: weakref.WeakKeyDictionary[nn.Module, AdapterState] = weakref.WeakKeyDictionary()
        self._schedule = ResetSchedule(type(self).__name__, logger)  # the setting along the stream
        self._lock = threading.RLock()
        self.last_stats: dict[str, Any] = {}
        self._case: Case | None = None

    @property
    def safeguard(self) -> CollapseSafeguard | None:
        """The collapse safeguard among the guards (``None``: off)."""
        return next((g for g in self.guards if isinstance(g, CollapseSafeguard)), None)

    @property
    def safe(self) -> SafeChoice | None:
        """The safe choice among the guards (``None``: off)."""
        return next((g for g in self.guards if isinstance(g, SafeChoice)), None)

    # ----------------------------------------------------------------- hooks for subclasses
    def select_params(self, network: nn.Module) -> list[nn.Parameter]:
        """The parameters the method updates: the set ``params`` (default :attr:`default_params`)."""
        return select_parameters(network, self.default_params if self.params is None else self.params)

    def init_state(self, state: AdapterState, network: nn.Module) -> None:
        """Create method-specific state in ``state.extra`` (called once per network, after the snapshot)."""

    def reset_state(self, state: AdapterState) -> None:
        """Reset method-specific state in ``state.extra`` (called by :meth:`reset`)."""

    def adapt(
        self, state: AdapterState, inputs: torch.Tensor, network: nn.Module
    ) -> tuple[dict[str, Any], torch.Tensor | None]:
        """Take the method's update for one case (gradients are enabled).

        Returns:
            the statistics of the update, and the logits to report if the method reports a prediction made during
            the update (e.g. TENT's pre-update forward), else ``None`` (then :meth:`predict` runs).
        """
        return {}, None

    def predict(self, state: AdapterState, inputs: torch.Tensor, network: nn.Module) -> torch.Tensor:
        """The reported prediction (logits) after the update; runs under ``no_grad``."""
        return network(inputs)

    def candidate_forward(self, state: AdapterState, inputs: torch.Tensor, network: nn.Module) -> torch.Tensor:
        """A forward of the adapted state in the statistics the layers are set to, without side effects (``safe``'s
        candidates and the safeguard's probe in the fallback); runs under ``no_grad``. Default: ``network(inputs)``;
        a method whose prediction goes through more than the network (VPTTA's prompt) overrides it."""
        return network(inputs)

    def method_state_dict(self, state: AdapterState) -> dict[str, Any]:
        """The method's part of :meth:`state_dict` (default :meth:`AdapterState.state_dict`)."""
        return state.state_dict()

    def load_method_state_dict(self, state: AdapterState, values: dict[str, Any]) -> None:
        """Restore what :meth:`method_state_dict` returned."""
        state.load_state_dict(values, owner=f"the adapter {type(self).__name__}")

    # ----------------------------------------------------------------- state
    def state_for(self, network: nn.Module) -> AdapterState:
        """The state of ``network``, created on first use (converts its norms and snapshots the source values)."""
        state = self._states.get(network)
        if state is None:
            norms = convert_norms(network)
            params = list(self.select_params(network))
            self._check_network(network, params, norms)
            snapshot = [p.detach().clone() for p in params]
            state = AdapterState(network=weakref.ref(network), params=params, norms=norms, snapshot=snapshot)
            state.optimizer = self._make_optimizer(params)
            state.guards = [guard.init_state() for guard in self.guards]
            self._states[network] = state
            self.init_state(state, network)
        return state

    def _check_network(self, network: nn.Module, params: list[nn.Parameter], norms: list[AdaptiveBatchNorm]) -> None:
        """Raise a clear error for a network the method cannot adapt (before any forward or autograd call)."""
        name = type(self).__name__
        if self.requires_batch_norm and not any(layer.has_source_stats for layer in norms):
            raise ValueError(
                f"{name} needs BatchNorm layers with source running statistics, and {type(network).__name__} has "
                "none (InstanceNorm, GroupNorm and LayerNorm already normalise each input by itself). Use a network "
                "with BatchNorm (for MONAI's UNet: norm='batch'), or a gradient method (Tent, SAR, GraTa) that "
                "updates the affine parameters of any normalisation layer."
            )
        if self.uses_optimizer and not params:
            raise ValueError(nothing_to_update_message(name, network, self.params))

    def _make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer | None:
        if not self.uses_optimizer or not params:
            return None
        return build_optimizer(
            params, self.optimizer_name, self.lr, self.betas, self.momentum, self.weight_decay, nesterov=False
        )

    def state_dict(self, network: nn.Module) -> dict[str, Any]:
        """Everything the adapter keeps for ``network``, on the CPU and in plain values (``torch.load(...,
        weights_only=True)`` reads it): the method's state (:meth:`method_state_dict`), each guard's, the random
        generator and the domain bookkeeping (the last domain, a pending reset). An interrupted continual run resumes
        exactly from it (:class:`~monai_tta.handlers.RunCheckpoint`)."""
        state = self.state_for(network)
        return {
            "method": self.method_state_dict(state),
            "guards": [guard.state_dict(s) for guard, s in zip(self.guards, state.guards)],
            "generator": self.generator.get_state(),
            **self._schedule.state_dict(),
        }

    @torch.no_grad()
    def load_state_dict(self, network: nn.Module, values: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, for ``network`` (its norms are converted if needed).

        Raises:
            ValueError: if the saved state is not this method's on this network, or was saved with other guards.
        """
        state = self.state_for(network)
        if len(values["guards"]) != len(self.guards):
            raise ValueError(
                f"the checkpoint holds the state of {len(values['guards'])} guards and this {type(self).__name__} has "
                f"{len(self.guards)}; it was written with other guards: delete it or use another output folder."
            )
        self.load_method_state_dict(state, values["method"])
        for guard, s, saved in zip(self.guards, state.guards, values["guards"]):
            guard.load_state_dict(s, saved)
        self.generator.set_state(values["generator"])
        self._schedule.load_state_dict(values)

    # ----------------------------------------------------------------- the setting: domains and resets
    def set_domain(self, domain: Any) -> None:
        """Tell the adapter the domain of the next case; in the ``"domain"`` setting a change triggers a reset. In
        every setting a change restarts what the guards keep per domain (``safe``'s per-domain choice, the
        safeguard's source gap and fallback)."""
        self._schedule.set_domain(domain, self.setting)

    @torch.no_grad()
    def reset(self, network: nn.Module | None = None) -> None:
        """Return ``network`` (or every network seen) to the source state: parameters, optimizer, method state, the
        random generator to its seed, and what the guards keep (per domain too: ``safe``'s per-domain entropies, the
        safeguard's source gap and fallback). The ``episodic`` setting's reset before each case keeps the per-domain
        memory.

        Reseeding makes a case's result (``episodic``) or a domain's results (``domain``) depend only on that case or
        domain, not on how many random draws came before it: this is what makes a run sharded over ranks
        (:mod:`monai_tta.distributed`) give the single-process results. The parameter objects stay the same (values
        are copied back), so references held elsewhere stay valid.
        """
        with self._lock:
            if self.seed is not None:
                self.generator.manual_seed(self.seed)
            states = self._states_of(network)
            self._reset_states(states)
            for state in states:
                for guard, s in zip(self.guards, state.guards):
                    guard.on_domain_change(s)

    def _states_of(self, network: nn.Module | None) -> list[AdapterState]:
        if network is None:
            return list(self._states.values())
        return [self._states[network]] if network in self._states else []

    @torch.no_grad()
    def _reset_states(self, states: list[AdapterState]) -> None:
        """Parameters, optimizer, step and method state back to the source; the guards' :meth:`Guard.on_reset`."""
        for state in states:
            for p, v in zip(state.params, state.snapshot):
                p.copy_(v)
            state.optimizer = self._make_optimizer(state.params)
            state.step = 0
            for guard, s in zip(self.guards, state.guards):
                guard.on_reset(s)
            self.reset_state(state)

    def networks(self) -> list[nn.Module]:
        """The networks the adapter keeps a state for (those it adapted or gave a state; held weakly: a network that
        is deleted leaves the list), e.g. to read :meth:`state_for` of the network a server built."""
        return list(self._states.keys())

    def n_params(self, network: nn.Module) -> int:
        """Number of scalar parameters the adapter updates on ``network``."""
        return sum(p.numel() for p in self.state_for(network).params)

    # ----------------------------------------------------------------- one case
    def case_parts(self, inputs: torch.Tensor) -> CaseParts:
        """The parts of the current case that the update computes its gradients on (the whole input outside a call
        or in the whole-input plan)."""
        return CaseParts() if self._case is None else self._case.parts(inputs)

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Adapt ``network`` to ``inputs`` and return the method's prediction (logits); see :meth:`adapt_and_predict`.

        Args:
            inputs: a batch ``(B, C, *spatial)``; treated as one case (its statistics are shared). Not modified.
            network: the network to adapt; its normalisation layers are converted on first use.
            args: unused (accepted for the ``Inferer`` signature).
            kwargs: unused.
        """
        return self.adapt_and_predict(inputs, network)

    def adapt_and_predict(self, inputs: torch.Tensor, network: nn.Module, case: Case | None = None) -> torch.Tensor:
        """Adapt ``network`` to the case ``inputs`` following the plan ``case`` and return the prediction (logits).

        Args:
            inputs: a batch ``(B, C, *spatial)``; treated as one case. Not modified.
            network: the network to adapt; its normalisation layers are converted on first use.
            case: the plan of the call (:class:`~monai_tta.adapters.cases.Case`; e.g. the volume plan of
                :class:`~monai_tta.inferers.SlidingWindowAdapter`); ``None``: the whole input, padded to the size
                multiple the network needs (:class:`~monai_tta.adapters.cases.WholeCase`).

        Raises:
            InvalidCaseError: (a ``ValueError``) if ``inputs`` is not a floating-point tensor ``(B, C, *spatial)``
                with the network's channel count and dimensionality, finite and not constant; the adapter's state is
                then untouched.
            ValueError: on the first call with ``network``, if the method has nothing to update on it or needs
                BatchNorm statistics it lacks; for a guard that needs whole inputs on a case adapted on patches.
        """
        check_network_input(inputs, network)
        with self._lock:  # one case at a time per adapter (concurrent serving requests share the network)
            logits = self._run_case(inputs, network, case if case is not None else WholeCase(network, self.divisor))
        if isinstance(inputs, MetaTensor):
            logits = MetaTensor(logits, meta=inputs.meta, applied_operations=inputs.applied_operations)
        return logits

    def _run_case(self, inputs: torch.Tensor, network: nn.Module, case: Case) -> torch.Tensor:
        state = self.state_for(network)
        episodic = self.setting == Setting.EPISODIC
        # episodic, a domain change, or per patient (no domain given and the input names its file)
        did_reset = self._schedule.reset_due(self.setting, inputs)
        if did_reset:  # the setting's reset keeps what the guards keep per domain
            if self.seed is not None:
                self.generator.manual_seed(self.seed)  # episodic: the same image gets the same random views
            self._reset_states([state])
            self._schedule.pending_reset = False
        guards = list(zip(self.guards, state.guards))
        if self._schedule.domain_changed:
            for guard, s in guards:
                guard.on_domain_change(s)
            self._schedule.domain_changed = False
        for guard, _ in guards:
            if guard.whole_inputs_only and not case.whole:
                raise ValueError(
                    f"{type(self).__name__}: the guard {type(guard).__name__} works on whole-input predictions and "
                    "cannot run on a volume adapted on patches (SlidingWindowAdapter); leave it out for sliding-window "
                    "inference (for SafeChoice: safe=None)."
                )
        x = case.prepare(inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs)
        state.seen += 1
        self.norm.apply(state.norms, state.seen)
        stats: dict[str, Any] = {StatKeys.RESET: did_reset, StatKeys.N_PARAMS: sum(p.numel() for p in state.params)}
        ctx = GuardContext(
            network=network,
            inputs=x,
            params=state.params,
            snapshot=state.snapshot,
            norms=state.norms,
            stats=stats,
            activation=self.activation,
            episodic=episodic,
            whole=case.whole,
            plain_prediction=self.plain_prediction and not state.params,
            forward=lambda z: self.candidate_forward(state, z, network),
            statistics_weight=lambda: self.norm.source_weight(max(state.seen, 1)),
        )
        if not case.whole:  # a volume: the guards score on the update's parts, one whole prediction is made
            ctx.scored = lambda: case.scored_inputs(x)
            ctx.predict_with = lambda p: case.candidate_predict(state, x, network, p)
            ctx.pending = lambda: case.predict(state, x, network, lambda z: self.predict(state, z, network))
        self._case = case
        try:
            with case.statistics(state, network, x):  # the guards' predictions of a volume use its statistics
                self._update(ctx, state, case, guards)
                for guard, s in guards:
                    if guard.choose(ctx, s) == Verdict.RESET:
                        if not ctx.source_prediction:  # what the state before the reset predicts
                            with torch.no_grad():
                                ctx.prediction()
                        self._reset_states([state])
                with torch.no_grad():
                    ctx.prediction()
        finally:
            self._case = None
        stats[StatKeys.STEP] = state.step
        self.last_stats = stats
        return case.finish(ctx.logits.detach())

    def _update(self, ctx: GuardContext, state: AdapterState, case: Case, guards: list[tuple[Guard, Any]]) -> None:
        """The method's update of the case, as the guards allow, and its prediction (into ``ctx.logits``)."""
        x, network = ctx.inputs, ctx.network
        held = [guard.before_update(ctx, s) for guard, s in guards]
        reported = None
        if self.steps > 0 and Verdict.HOLD not in held:
            saved = state.copy_update() if any(guard.may_undo for guard, _ in guards) else None
            with torch.enable_grad(), only_requires_grad(network, state.params):
                for _ in range(self.steps):
                    step_stats, logits = self.adapt(state, x, network)
                    reported = logits if reported is None else reported
                    ctx.stats.update(step_stats)
            ctx.updated = True
            verdicts = [guard.after_update(ctx, s) for guard, s in guards]
            if Verdict.UNDO in verdicts:
                if saved is None:
                    raise RuntimeError(f"{type(self).__name__}: a guard answered undo without setting may_undo.")
                state.undo_update(saved)
            else:
                state.step += 1
            if Verdict.RESET in verdicts:
                self._reset_states([state])
        if ctx.logits is None and ctx.whole:  # no guard gave the prediction (a volume's is made on first need)
            if reported is None:
                with torch.no_grad():
                    reported = case.predict(state, x, network, lambda z: self.predict(state, z, network))
            ctx.logits = reported
