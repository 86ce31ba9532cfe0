"""The adapter contract: a MONAI ``Inferer`` that adapts the network to each incoming case, then predicts.

``adapter(inputs, network) -> logits``. Inside the call the adapter enables gradients (MONAI's evaluator and MONAI
Label call inferers under ``no_grad``), puts the normalisation layers in the regime of the method, takes its update
step(s) on its own parameter set and returns the prediction that the method reports. Its state (source snapshot,
optimizer, step count) is kept per network; :meth:`Adapter.reset` returns to the source state.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import look_up_option
from torch import nn

from monai_tta.adapters.finite_guard import UpdateGuard
from monai_tta.gradients import only_requires_grad
from monai_tta.keys import Setting, StatKeys
from monai_tta.norms import AdaptiveBatchNorm, NormPolicy, bn_affine_params, convert_norms
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
    per-network state, resets, input protection, statistics) is shared here.

    Args:
        setting: when to return to the source state: ``"episodic"`` (before each case), ``"domain"`` (when the
            domain given to :meth:`set_domain` changes) or ``"continual"`` (never).
        norm: normalisation regime (a :class:`~monai_tta.norms.NormPolicy`, a regime name or a dict of its fields);
            ``None`` gives the method's published regime.
        optimizer: ``"adam"`` or ``"sgd"``.
        lr: base learning rate.
        betas: Adam's betas.
        momentum: SGD momentum.
        weight_decay: weight decay.
        steps: update steps per case.
        seed: seed of the adapter's random generator (augmentations); ``None`` draws from torch's global generator.

    Raises:
        ValueError: for an unknown setting or optimizer, or ``steps < 0``.
    """

    #: regime used when ``norm`` is ``None``.
    default_norm: str = "image"
    #: whether the method updates parameters with an optimizer.
    uses_optimizer: bool = True

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
    ) -> None:
        super().__init__()
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
        self.last_stats: dict[str, Any] = {}

    # ----------------------------------------------------------------- hooks for subclasses
    def select_params(self, network: nn.Module) -> list[nn.Parameter]:
        """The parameters the method updates (default: every BatchNorm weight and bias)."""
        return bn_affine_params(network)

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

    # ----------------------------------------------------------------- shared machinery
    def state_for(self, network: nn.Module) -> AdapterState:
        """The state of ``network``, created on first use (converts its norms and snapshots the source values)."""
        state = self._states.get(network)
        if state is None:
            norms = convert_norms(network)
            params = list(self.select_params(network))
            snapshot = [p.detach().clone() for p in params]
            state = AdapterState(network=weakref.ref(network), params=params, norms=norms, snapshot=snapshot)
            state.optimizer = self._make_optimizer(params)
            self._states[network] = state
            self.init_state(state, network)
        return state

    def _make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer | None:
        if not self.uses_optimizer or not params:
            return None
        return build_optimizer(
            params, self.optimizer_name, self.lr, self.betas, self.momentum, self.weight_decay, nesterov=False
        )

    def set_domain(self, domain: Any) -> None:
        """Tell the adapter the domain of the next case; in the ``"domain"`` setting a change triggers a reset."""
        if self.setting == Setting.DOMAIN and self._domain is not None and domain != self._domain:
            self._pending_reset = True
        self._domain = domain

    @torch.no_grad()
    def reset(self, network: nn.Module | None = None) -> None:
        """Return ``network`` (or every network seen) to the source state: parameters, optimizer, method state.

        The parameter objects stay the same (values are copied back), so references held elsewhere stay valid.
        """
        states = [self._states[network]] if network is not None and network in self._states else []
        if network is None:
            states = list(self._states.values())
        for state in states:
            for p, v in zip(state.params, state.snapshot):
                p.copy_(v)
            state.optimizer = self._make_optimizer(state.params)
            state.step = 0
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
        """
        check_network_input(inputs, network)
        state = self.state_for(network)
        did_reset = self.setting == Setting.EPISODIC or self._pending_reset
        if did_reset:
            self.reset(network)
            self._pending_reset = False
        x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        state.seen += 1
        self.norm.apply(state.norms, state.seen)
        stats: dict[str, Any] = {StatKeys.RESET: did_reset, StatKeys.N_PARAMS: sum(p.numel() for p in state.params)}
        logits = None
        if self.steps > 0:
            guard = UpdateGuard(state)
            with torch.enable_grad(), only_requires_grad(network, state.params):
                for _ in range(self.steps):
                    step_stats, reported = self.adapt(state, x, network)
                    logits = reported if logits is None else logits
                    stats.update(step_stats)
            bad = guard.check(state, stats)
            stats[StatKeys.NONFINITE] = bad is not None
            if bad is not None:
                guard.restore(state)
                stats[StatKeys.NONFINITE_PART] = bad
            else:
                state.step += 1
        if logits is None:
            with torch.no_grad():
                logits = self.predict(state, x, network)
        stats[StatKeys.STEP] = state.step
        self.last_stats = stats
        logits = logits.detach()
        if isinstance(inputs, MetaTensor):
            logits = MetaTensor(logits, meta=inputs.meta, applied_operations=inputs.applied_operations)
        return logits
