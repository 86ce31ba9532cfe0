"""The adapter contract: a MONAI ``Inferer`` that adapts the network to each incoming case, then predicts.

``adapter(inputs, network) -> logits``. Inside the call the adapter enables gradients (MONAI's evaluator and MONAI
Label call inferers under ``no_grad``), puts the normalisation layers in the regime of the method, takes its update
step(s) on its own parameter set and returns the prediction that the method reports. Its state (source snapshot,
optimizer, step count) is kept per network; :meth:`Adapter.reset` returns to the source state.

Any network: the parameters a method updates are one shared option, ``params`` (:mod:`monai_tta.params`); a network
on which that set is empty raises a clear error on the first call. Any size: a whole input is padded to the size
multiple the network needs and cropped back (:class:`~monai_tta.adapters.cases.WholeCase`); a volume larger than the
network's patch goes through :class:`~monai_tta.inferers.SlidingWindowAdapter`, which installs its own
:class:`~monai_tta.adapters.cases.Case` plan for the call.

Serving (MONAI Label builds the bundle's ``inferer`` once and calls it on one cached network for every request): a call
holds the adapter's lock, so concurrent requests never interleave their updates; in the ``"episodic"`` setting every
call starts from the source state and from the seeded random generator, so the same image gives the same prediction
whatever came before. ``"continual"`` serving (the state carries over between requests) is an explicit opt-in.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import look_up_option
from torch import nn

from monai_tta.adapters.cases import Case, CaseParts, WholeCase
from monai_tta.adapters.finite_guard import UpdateGuard
from monai_tta.adapters.safe_choice import SafeChoice, mean_entropy, source_forward
from monai_tta.adapters.safeguard import CollapseSafeguard
from monai_tta.gradients import only_requires_grad
from monai_tta.keys import Setting, StatKeys
from monai_tta.norms import AdaptiveBatchNorm, NormPolicy, convert_norms
from monai_tta.params import ParamSelection, nothing_to_update_message, select_parameters
from monai_tta.validation import check_network_input

__all__ = ["Adapter", "AdapterState", "build_optimizer", "set_lr"]

_OPTIMIZERS = ("adam", "sgd")


def build_optimizer(
    params: Sequence[nn.Parameter],
    name: str = "adam",
    lr: float = 1e-4,
    betas: Sequence[float] = (0.9, 0.999),
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    """Build the optimizer of an adapter.

    Args:
        params: parameters to optimise.
        name: ``"adam"`` or ``"sgd"``.
        lr: base learning rate.
        betas: Adam's betas.
        momentum: SGD momentum.
        weight_decay: weight decay.
        nesterov: SGD Nesterov momentum.

    Raises:
        ValueError: for an unknown optimizer name.
    """
    name = look_up_option(name.lower(), _OPTIMIZERS)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group (a Python float: no device synchronisation later)."""
    for group in optimizer.param_groups:
        group["lr"] = float(lr)


@dataclass
class AdapterState:
    """Per-network state of an adapter.

    Attributes:
        network: weak reference to the adapted network.
        params: the parameters the method updates.
        norms: the adaptive normalisation layers of the network.
        snapshot: source values of ``params`` (restored by ``reset``).
        optimizer: optimizer over ``params`` (``None`` for gradient-free methods).
        step: number of cases adapted since the last reset.
        seen: number of cases seen (the warm-up counter of the ``"warmup"`` norm regime); the base class never
            resets it, a method may (VPTTA does, in ``reset_state``).
        extra: method-specific state (memory bank, prompt, ...).
    """

    network: weakref.ref
    params: list[nn.Parameter]
    norms: list[AdaptiveBatchNorm]
    snapshot: list[torch.Tensor]
    optimizer: torch.optim.Optimizer | None = None
    step: int = 0
    seen: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Adapter(Inferer):
    """Base class of every adaptation method.

    A subclass implements :meth:`adapt` (the update of one case) and, when needed, :meth:`select_params`,
    :meth:`init_state`, :meth:`reset_state` and :meth:`predict`. Everything else (gradient mode, normalisation regime,
    per-network state, resets, input protection, statistics) is shared here. An :meth:`adapt` that takes its gradients
    with ``self.case_parts(inputs).grads(loss_of_part, params)`` (:class:`~monai_tta.adapters.cases.CaseParts`) works
    unchanged on whole inputs and on the patches of a volume; a method that cannot sets :attr:`supports_patches`.

    Args:
        setting: when to return to the source state: ``"episodic"`` (before each case, the seeded random generator
            included), ``"domain"`` (when the domain given to :meth:`set_domain` changes) or ``"continual"`` (never).
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
        safeguard: the collapse safeguard (:class:`~monai_tta.adapters.safeguard.CollapseSafeguard`, or a dict of
            its fields): after each case of the ``domain`` and ``continual`` settings, label-free signals of a
            runaway model, and the source gap (an adapted model steadily less confident than the source model on
            the same cases); when one fires the adapter returns to the source state (after the source gap: the
            source model predicts until the gap clears or the domain changes). ``None``: on (default thresholds)
            for the methods with an optimizer, off for the others; ``True``: on for any method; ``False``: off.
        safe: the label-free choice of the reported prediction (:class:`~monai_tta.adapters.safe_choice.SafeChoice`,
            a dict of its fields, ``"case"`` or ``"domain"``, or ``True`` for the defaults): among the method's own
            prediction, the adapted state with source / mixed / image statistics and the source model, the most
            confident one, per case or per domain. The update is unchanged. ``None``/``False``: off (default).
        activation: how the network's logits become probabilities in every objective and signal of the method:
            ``"sigmoid"`` (multi-label: one independent probability per channel) or ``"softmax"`` (mutually
            exclusive classes over the channels, background included: MONAI bundles that end in softmax or argmax).

    Raises:
        ValueError: for an unknown setting, optimizer, parameter set or activation, or ``steps < 0``.
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
        safeguard: CollapseSafeguard | dict | bool | None = None,
        safe: SafeChoice | dict | bool | str | None = None,
        activation: str = "sigmoid",
    ) -> None:
        super().__init__()
        self.activation = look_up_option(activation, ("sigmoid", "softmax"))
        self.safe: SafeChoice | None = SafeChoice.from_any(safe)
        if safeguard is None or safeguard is True:
            safeguard = CollapseSafeguard() if (self.uses_optimizer or safeguard) else None
        elif isinstance(safeguard, dict):
            safeguard = CollapseSafeguard(**safeguard)
        self.safeguard: CollapseSafeguard | None = safeguard or None
        if isinstance(params, str):
            select_parameters(nn.Module(), params)  # validates the name now rather than at the first case
        self.params = params
        self.divisor = divisor
        self.setting = look_up_option(setting, Setting)
        self.norm = NormPolicy.from_any(norm, default=self.default_norm)
        self.optimizer_name = look_up_option(optimizer.lower(), _OPTIMIZERS)
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}.")
        self.lr, self.betas, self.momentum, self.weight_decay, self.steps = (
            lr,
            tuple(betas),
            momentum,
            weight_decay,
            steps,
        )
        self.seed = seed
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()
        self._states: weakref.WeakKeyDictionary[nn.Module, AdapterState] = weakref.WeakKeyDictionary()
        self._domain: Any = None
        self._pending_reset = False
        self._domain_changed = False
        self._lock = threading.RLock()
        self.last_stats: dict[str, Any] = {}
        self._case_factory: Callable[[nn.Module], Case] | None = None
        self._case: Case | None = None

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

    # ----------------------------------------------------------------- shared machinery
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

    # ----------------------------------------------------------------- cases: whole inputs and volumes
    @contextmanager
    def using_case(self, factory: Callable[[nn.Module], Case]) -> Iterator[None]:
        """Within the context, each call follows the :class:`~monai_tta.adapters.cases.Case` plan ``factory(network)``
        instead of the whole-input plan (used by :class:`~monai_tta.inferers.SlidingWindowAdapter`). The context holds
        the adapter's lock, so a concurrent call (another serving request) never runs with, or resets, this plan."""
        with self._lock:
            previous, self._case_factory = self._case_factory, factory
            try:
                yield
            finally:
                self._case_factory = previous

    def case_parts(self, inputs: torch.Tensor) -> CaseParts:
        """The parts of the current case that the update computes its gradients on (the whole input outside a call
        or in the whole-input plan)."""
        return CaseParts() if self._case is None else self._case.parts(inputs)

    def _make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer | None:
        if not self.uses_optimizer or not params:
            return None
        return build_optimizer(
            params, self.optimizer_name, self.lr, self.betas, self.momentum, self.weight_decay, nesterov=False
        )

    def set_domain(self, domain: Any) -> None:
        """Tell the adapter the domain of the next case; in the ``"domain"`` setting a change triggers a reset. In
        every setting a change restarts the domain-level memory: ``safe``'s per-domain choice and the safeguard's
        source gap (and ends its fallback)."""
        if self._domain is not None and domain != self._domain:
            self._domain_changed = True
            if self.setting == Setting.DOMAIN:
                self._pending_reset = True
        self._domain = domain

    @torch.no_grad()
    def reset(self, network: nn.Module | None = None) -> None:
        """Return ``network`` (or every network seen) to the source state: parameters, optimizer, method state, the
        random generator to its seed, and what is kept per domain (``safe``'s per-domain entropies, the safeguard's
        source gap and fallback). The ``episodic`` setting's reset before each case keeps the per-domain memory.

        Reseeding makes a case's result (``episodic``) or a domain's results (``domain``) depend only on that case or
        domain, not on how many random draws came before it: this is what makes a run sharded over ranks
        (:mod:`monai_tta.distributed`) give the single-process results. The parameter objects stay the same (values
        are copied back), so references held elsewhere stay valid.
        """
        with self._lock:
            if self.seed is not None:
                self.generator.manual_seed(self.seed)
            self._reset_states(network)
            for state in self._states_of(network):
                self._clear_domain_memory(state)

    def _states_of(self, network: nn.Module | None) -> list[AdapterState]:
        if network is None:
            return list(self._states.values())
        return [self._states[network]] if network in self._states else []

    @staticmethod
    def _clear_domain_memory(state: AdapterState) -> None:
        """Forget what is kept per domain: ``safe``'s per-domain entropies and the safeguard's source gap."""
        SafeChoice.clear(state)
        CollapseSafeguard.clear_gap(state)

    def _reset_states(self, network: nn.Module | None) -> None:
        for state in self._states_of(network):
            for p, v in zip(state.params, state.snapshot):
                p.copy_(v)
            state.optimizer = self._make_optimizer(state.params)
            state.step = 0
            CollapseSafeguard.clear(state)
            self.reset_state(state)

    def n_params(self, network: nn.Module) -> int:
        """Number of scalar parameters the adapter updates on ``network``."""
        return sum(p.numel() for p in self.state_for(network).params)

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Adapt ``network`` to ``inputs`` and return the method's prediction (logits).

        Args:
            inputs: a batch ``(B, C, *spatial)``; treated as one case (its statistics are shared). Not modified.
            network: the network to adapt; its normalisation layers are converted on first use.
            args: unused (accepted for the ``Inferer`` signature).
            kwargs: unused.

        An update whose loss, gradient or new parameters are not finite is undone (the previous state is kept) and
        recorded in :attr:`last_stats` (``nonfinite``: which part was not finite).

        Raises:
            InvalidCaseError: (a ``ValueError``) if ``inputs`` is not a floating-point tensor ``(B, C, *spatial)``
                with the network's channel count and dimensionality, finite and not constant; the adapter's state is
                then untouched.
            ValueError: on the first call with ``network``, if the method has nothing to update on it or needs
                BatchNorm statistics it lacks.
        """
        check_network_input(inputs, network)
        with self._lock:  # one case at a time per adapter (concurrent serving requests share the network)
            logits = self._adapt_and_predict(inputs, network)
        if isinstance(inputs, MetaTensor):
            logits = MetaTensor(logits, meta=inputs.meta, applied_operations=inputs.applied_operations)
        return logits

    def _adapt_and_predict(self, inputs: torch.Tensor, network: nn.Module) -> torch.Tensor:
        state = self.state_for(network)
        episodic = self.setting == Setting.EPISODIC
        did_reset = episodic or self._pending_reset
        if did_reset:
            if self.seed is not None:
                self.generator.manual_seed(self.seed)  # episodic: the same image gets the same random views
            with torch.no_grad():  # an episodic reset keeps the domain-level memory (safe per domain)
                self._reset_states(network)
            self._pending_reset = False
        if self._domain_changed:
            self._clear_domain_memory(state)
            self._domain_changed = False
        x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        case = self._case_factory(network) if self._case_factory is not None else WholeCase(network, self.divisor)
        if self.safe is not None and not case.whole:
            raise ValueError(
                f"{type(self).__name__}: safe chooses among whole-input predictions and cannot run on a volume "
                "adapted on patches (SlidingWindowAdapter); turn safe off (safe=None) for sliding-window inference."
            )
        x = case.prepare(x)
        state.seen += 1
        self.norm.apply(state.norms, state.seen)
        guard = None if episodic else self.safeguard
        probing = guard is not None and guard.source_gap is not None and case.whole
        fallback = probing and CollapseSafeguard.in_fallback(state)
        stats: dict[str, Any] = {StatKeys.RESET: did_reset, StatKeys.N_PARAMS: sum(p.numel() for p in state.params)}
        logits = None
        self._case = case
        try:
            with case.statistics(state, network, x):
                if self.steps > 0 and not fallback:
                    guard_update = UpdateGuard(state)
                    with torch.enable_grad(), only_requires_grad(network, state.params):
                        for _ in range(self.steps):
                            step_stats, reported = self.adapt(state, x, network)
                            logits = reported if logits is None else logits
                            stats.update(step_stats)
                    bad = guard_update.check(state, stats)
                    stats[StatKeys.NONFINITE] = bad is not None
                    if bad is not None:
                        guard_update.restore(state)
                        stats[StatKeys.NONFINITE_PART] = bad
                    else:
                        state.step += 1
                if fallback:  # the source state after the source gap fired: the source model predicts
                    logits = source_forward(state, network, x)
                elif logits is None or not case.whole:
                    with torch.no_grad():
                        logits = case.predict(self, state, x, network)
        finally:
            self._case = None
        source_logits = None
        if guard is not None:
            signal = None
            if probing and guard.probe_due(state):
                logits, source_logits, signal = self._probe_source_gap(guard, state, network, x, logits, fallback)
                stats[StatKeys.SAFEGUARD_GAP] = CollapseSafeguard.gap(state)
            if signal is None and self.steps > 0 and not fallback:
                signal = guard.check(state, logits, getattr(self, "activation", "sigmoid"))
                if signal is not None:  # back to the source state for the next case
                    with torch.no_grad():
                        self._reset_states(network)
            guard.record(stats, signal)
            if probing:
                stats[StatKeys.SAFEGUARD_FALLBACK] = CollapseSafeguard.in_fallback(state)
        if self.safe is not None:
            in_fallback = probing and CollapseSafeguard.in_fallback(state)  # the prediction is the source model's
            logits, safe_stats = self.safe.choose(self, state, network, x, logits, source_logits, in_fallback)
            stats.update(safe_stats)
        stats[StatKeys.STEP] = state.step
        self.last_stats = stats
        return case.finish(logits.detach())

    def _probe_source_gap(
        self,
        guard: CollapseSafeguard,
        state: AdapterState,
        network: nn.Module,
        x: torch.Tensor,
        logits: torch.Tensor,
        fallback: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, str | None]:
        """One probe of the safeguard's source gap: the prediction to report, the source model's prediction, and
        ``"source_gap"`` when the gap fired on this case (the adapter is then in the source state)."""
        with torch.no_grad():
            if fallback:  # the method's statistics regime on the source weights, against the source model
                source_logits, adapted = logits, self.candidate_forward(state, x, network)
            else:
                source_logits, adapted = source_forward(state, network, x), logits
            activation = getattr(self, "activation", "sigmoid")
            h = torch.stack([mean_entropy(adapted, activation), mean_entropy(source_logits, activation)]).tolist()
        now = guard.check_gap(state, h[0], h[1])
        if now and not fallback:
            with torch.no_grad():
                self._reset_states(network)  # keeps the gap and the fallback flag
            return source_logits, source_logits, "source_gap"
        if fallback and not now:  # the gap cleared: the method adapts again from the next case
            return adapted, source_logits, None
        return logits, source_logits, None
