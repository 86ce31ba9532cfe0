"""Normalisation regimes: which statistics the BatchNorm layers of an adapted network use.

:func:`convert_norms` swaps every BatchNorm layer of a network for an :class:`AdaptiveBatchNorm` that shares the layer's
parameters and buffers (so the state-dict keys and values stay the same) and never updates the running statistics.
A :class:`NormPolicy` then sets, before each case, how the layers mix the current input's statistics with the source
running statistics.

For a volume adapted on patches (:class:`~monai_tta.inferers.SlidingWindowAdapter`), the "current input's statistics"
are those of the whole volume: :func:`pooled_statistics` runs statistics passes over its windows, or
:func:`captured_statistics` takes them from one forward of a batch of its patches, and :func:`case_statistics` makes the
layers normalise every patch with them (see :class:`AdaptiveBatchNorm`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.utils import look_up_option
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from monai_tta.keys import NormRegime

__all__ = [
    "AdaptiveBatchNorm",
    "NormPolicy",
    "convert_norms",
    "norm_layers",
    "warmup_lambda",
    "per_sample_stats",
    "statistics_prior",
    "recording_stats",
    "CaseStats",
    "pooled_statistics",
    "case_statistics",
    "captured_statistics",
]

#: fixed statistics of one case for one layer: biased ``mean`` and ``var`` of shape ``(C,)`` and the number of
#: values per channel they were computed over.
CaseStats = tuple[torch.Tensor, torch.Tensor, int]


class AdaptiveBatchNorm(nn.Module):
    """A BatchNorm layer whose statistics are chosen by the adapter, whatever the module's train/eval mode.

    The layer normalises with ``mean = prior * running_mean + (1 - prior) * mean(x)`` (same for the variance):
    ``prior = 1`` is plain inference with the source statistics, ``prior = 0`` uses the input's own statistics
    exactly as ``nn.BatchNorm`` in training mode does (biased variance, gradient through the statistics), without
    touching the running buffers.

    Attributes:
        prior: weight on the source running statistics, in ``[0, 1]``.
        per_sample: compute the input statistics per sample (instance-style) instead of over the whole batch, so that a
            batch of ``B`` views normalises each view exactly as ``B`` separate forwards would.
        unbiased: use the unbiased variance for the input statistics (VPTTA), instead of the biased one (BatchNorm).
        detach_stats: stop the gradient through the input statistics (VPTTA's warm-up BN).
        record: keep ``(x, mean, var)`` of the last forward in ``recorded`` (for statistics-alignment losses).
        case_stats: fixed statistics of the current case (:data:`CaseStats`) used instead of ``mean(x)`` and ``var(x)``
            (a volume adapted on patches normalises every patch with the volume's statistics); constants, so no
            gradient flows through them. ``unbiased`` rescales their variance by ``n / (n - 1)``.
        collect: while not ``None``, the per-channel ``[n, mean, M2]`` (count, mean and sum of squared deviations,
            float64) of every forward's input are pooled into this list (a statistics pass, see
            :func:`pooled_statistics`).
        capture: while ``True`` and ``case_stats`` is ``None``, the next forward sets ``case_stats`` to the statistics
            of its input batch (those BatchNorm in training mode computes, detached) and normalises with them; later
            forwards keep them (see :func:`captured_statistics`).

    Args:
        bn: the BatchNorm layer to wrap; its ``weight``, ``bias`` and buffers are shared, not copied.
    """

    def __init__(self, bn: _BatchNorm) -> None:
        super().__init__()
        self.num_features = bn.num_features
        self.eps = bn.eps
        self.weight = bn.weight
        self.bias = bn.bias
        self.register_buffer("running_mean", bn.running_mean)
        self.register_buffer("running_var", bn.running_var)
        self.register_buffer("num_batches_tracked", getattr(bn, "num_batches_tracked", None))
        self.prior = 1.0 if bn.running_mean is not None else 0.0
        self.per_sample = False
        self.unbiased = False
        self.detach_stats = False
        self.record = False
        self.recorded: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.case_stats: CaseStats | None = None
        self.collect: list | None = None
        self.capture = False

    @property
    def has_source_stats(self) -> bool:
        """Whether the wrapped layer carries source running statistics."""
        return self.running_mean is not None and self.running_var is not None

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, prior={self.prior}, per_sample={self.per_sample}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"expected input with {self.num_features} channels, got shape {tuple(x.shape)}.")
        plain = not (self.record or self.unbiased or self.detach_stats) and self.case_stats is None
        if self.prior >= 1.0 and not self.record:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        if self.collect is not None:
            self._accumulate(x)
        if self.capture and self.case_stats is None:
            self._capture(x)
        if self.case_stats is not None and not self.record:
            return self._normalise_fixed(x)
        if self.prior <= 0.0 and plain:
            if self.per_sample:
                return F.instance_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        if self.case_stats is not None:
            mean, var = self._fixed_stats(x)
        else:
            dims = tuple(range(2, x.dim())) if self.per_sample else (0, *range(2, x.dim()))
            var, mean = torch.var_mean(x, dim=dims, unbiased=self.unbiased, keepdim=True)
        if self.detach_stats:
            mean, var = mean.detach(), var.detach()
        if self.prior > 0.0:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            mean = self.prior * self.running_mean.view(shape) + (1.0 - self.prior) * mean
            var = self.prior * self.running_var.view(shape) + (1.0 - self.prior) * var
        if self.record:
            self.recorded = (x, mean, var)
        out = (x - mean) * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out

    @torch.no_grad()
    def _batch_stats(self, x: torch.Tensor) -> CaseStats:
        """Biased per-channel mean and variance of ``x`` over its batch and spatial axes (BatchNorm's training-mode
        statistics), detached, and the number of values per channel."""
        var, mean = torch.var_mean(x.detach(), dim=(0, *range(2, x.dim())), unbiased=False)
        return mean, var, x.numel() // x.shape[1]

    def _accumulate(self, x: torch.Tensor) -> None:
        """Pool this forward's statistics into :attr:`collect` (Chan et al.'s parallel rule: exact, and stable when
        the mean is large against the spread, unlike sums of squares)."""
        mean, var, count = self._batch_stats(x)
        mean, m2 = mean.double(), var.double() * count
        if not self.collect:
            self.collect.extend([count, mean, m2])
            return
        n, pooled_mean, pooled_m2 = self.collect
        total = n + count
        delta = mean - pooled_mean
        pooled_mean = pooled_mean + delta * (count / total)
        self.collect[:] = [total, pooled_mean, pooled_m2 + m2 + delta**2 * (n * count / total)]

    def _capture(self, x: torch.Tensor) -> None:
        mean, var, count = self._batch_stats(x)
        self.case_stats = (mean, var, count)

    def _normalise_fixed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise with the fixed case statistics (constants: the gradient reaches the input and the affine
        parameters, not the statistics), mixed with the source ones by ``prior``, in one fused ``batch_norm``."""
        mean, var, count = self.case_stats
        mean, var = mean.to(x), var.to(x)
        if self.unbiased and count > 1:
            var = var * (count / (count - 1))
        if self.prior > 0.0:
            mean = self.prior * self.running_mean + (1.0 - self.prior) * mean
            var = self.prior * self.running_var + (1.0 - self.prior) * var
        return F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)

    def _fixed_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, var, count = self.case_stats
        if self.unbiased and count > 1:
            var = var * (count / (count - 1))
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return mean.to(x).view(shape), var.to(x).view(shape)


def convert_norms(network: nn.Module) -> list[AdaptiveBatchNorm]:
    """Replace every BatchNorm layer of ``network`` in place by an :class:`AdaptiveBatchNorm` sharing its tensors.

    Idempotent: layers converted before are kept. The state dict keeps its keys and values.

    Args:
        network: the network to convert.

    Returns:
        the adaptive layers, in module order.
    """
    for name, module in list(network.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, _BatchNorm):
                setattr(module, child_name, AdaptiveBatchNorm(child))
        del name
    return norm_layers(network)


def norm_layers(network: nn.Module) -> list[AdaptiveBatchNorm]:
    """The :class:`AdaptiveBatchNorm` layers of ``network``, in module order."""
    return [m for m in network.modules() if isinstance(m, AdaptiveBatchNorm)]


def warmup_lambda(t: int, warm_n: float = 5.0) -> float:
    """VPTTA's weight on the current image statistics after ``t`` images: ``1 / (sqrt(t) / warm_n + 1)``.

    Args:
        t: number of images seen, counting the current one (``t >= 1``).
        warm_n: warm-up constant (5 in the reference).

    Raises:
        ValueError: if ``t < 1`` or ``warm_n <= 0``.
    """
    if t < 1 or warm_n <= 0:
        raise ValueError(f"warmup_lambda needs t >= 1 and warm_n > 0, got t={t}, warm_n={warm_n}.")
    return 1.0 / (math.sqrt(t) / warm_n + 1.0)


@dataclass
class NormPolicy:
    """How the adaptive BatchNorm layers mix image and source statistics.

    Args:
        regime: one of :class:`~monai_tta.keys.NormRegime` (``"source"``, ``"image"``, ``"mix"``, ``"warmup"``).
        prior: weight on the source statistics for ``"mix"`` (e.g. 0.1-0.25 on real scanner shifts).
        warm_n: VPTTA's warm-up constant for ``"warmup"``.

    Raises:
        ValueError: for an unknown regime or a prior outside ``[0, 1]``.
    """

    regime: str = NormRegime.IMAGE
    prior: float = 0.0
    warm_n: float = 5.0

    def __post_init__(self) -> None:
        self.regime = look_up_option(self.regime, NormRegime)
        if not 0.0 <= self.prior <= 1.0:
            raise ValueError(f"prior must be in [0, 1], got {self.prior}.")

    @classmethod
    def from_any(cls, policy: NormPolicy | str | dict | None, default: str = NormRegime.IMAGE) -> NormPolicy:
        """Build a policy from a policy, a regime name, a dict of fields or ``None`` (the default regime)."""
        if isinstance(policy, NormPolicy):
            return policy
        if policy is None:
            return cls(regime=default)
        if isinstance(policy, str):
            return cls(regime=policy)
        if isinstance(policy, dict):
            return cls(**policy)
        raise TypeError(f"norm must be a NormPolicy, a regime name or a dict, got {type(policy).__name__}.")

    def source_weight(self, t: int) -> float:
        """Weight on the source statistics for the ``t``-th image (``t >= 1``)."""
        if self.regime == NormRegime.SOURCE:
            return 1.0
        if self.regime == NormRegime.IMAGE:
            return 0.0
        if self.regime == NormRegime.MIX:
            return float(self.prior)
        return 1.0 - warmup_lambda(t, self.warm_n)

    def apply(self, layers: Sequence[AdaptiveBatchNorm], t: int = 1) -> None:
        """Configure ``layers`` for the ``t``-th image.

        A BatchNorm layer built without running statistics (``track_running_stats=False``) always normalises with
        its input's own statistics, as it does in plain inference.
        """
        prior = self.source_weight(t)
        warm = self.regime == NormRegime.WARMUP
        for layer in layers:
            own = layer.has_source_stats  # a BatchNorm without running statistics keeps its plain-inference behaviour
            layer.prior = prior if own else 0.0
            layer.unbiased = warm and own
            layer.detach_stats = warm and own


@contextmanager
def per_sample_stats(layers: Sequence[AdaptiveBatchNorm]) -> Iterator[None]:
    """Within the context, ``layers`` compute input statistics per sample, so a batch of ``B`` independent views
    normalises exactly as ``B`` separate forwards; the previous setting is restored on exit."""
    flags = [layer.per_sample for layer in layers]
    try:
        for layer in layers:
            layer.per_sample = True
        yield
    finally:
        for layer, flag in zip(layers, flags):
            layer.per_sample = flag


@contextmanager
def statistics_prior(norms: Sequence[AdaptiveBatchNorm], prior: float) -> Iterator[None]:
    """Within the context, the layers with source statistics normalise with ``prior * source + (1 - prior) * image``
    (the others keep their inputs' own statistics); their previous weights are restored on exit."""
    saved = [layer.prior for layer in norms]
    try:
        for layer in norms:
            if layer.has_source_stats:
                layer.prior = prior
        yield
    finally:
        for layer, value in zip(norms, saved):
            layer.prior = value


@contextmanager
def recording_stats(layers: Sequence[AdaptiveBatchNorm]) -> Iterator[None]:
    """Within the context, ``layers`` keep ``(x, mean, var)`` of their last forward in ``recorded`` (for statistics
    alignment losses); on exit recording stops and the records are dropped."""
    try:
        for layer in layers:
            layer.record = True
        yield
    finally:
        for layer in layers:
            layer.record = False
            layer.recorded = None


@contextmanager
def case_statistics(layers: Sequence[AdaptiveBatchNorm], stats: Sequence[CaseStats | None]) -> Iterator[None]:
    """Within the context, each layer normalises with its fixed case statistics (``None``: its own input's, as
    before); on exit the layers use their inputs' statistics again.

    Raises:
        ValueError: if ``stats`` does not have one entry per layer.
    """
    if len(stats) != len(layers):
        raise ValueError(f"got {len(stats)} case statistics for {len(layers)} layers.")
    try:
        for layer, value in zip(layers, stats):
            layer.case_stats = value
        yield
    finally:
        for layer in layers:
            layer.case_stats = None


def pooled_statistics(
    layers: Sequence[AdaptiveBatchNorm], run: Callable[[], None], passes: int = 1
) -> list[CaseStats | None]:
    """Per-layer statistics of one case seen in parts (e.g. the windows of a volume), pooled over all the parts.

    ``run()`` forwards every part of the case through the network (without gradient). Each layer pools the count,
    mean and sum of squared deviations of its inputs per channel over all the parts (float64), and its case statistics
    are their mean and biased variance: the statistics a BatchNorm in training mode would compute on the batch of all
    the parts. In the first pass each part is normalised with its own
    statistics; each further pass normalises with the previous pass's pooled statistics and pools again. After ``k``
    passes the layers with fewer than ``k`` BatchNorm layers upstream have exactly the pooled statistics of the
    network normalised throughout with pooled statistics; ``passes`` = the number of BatchNorm layers makes all of
    them exact. Layers that use only source statistics (``prior >= 1``) get ``None``.

    Args:
        layers: the adaptive layers of the network.
        run: forwards all the parts of the case.
        passes: number of statistics passes (``>= 1``).

    Raises:
        ValueError: if ``passes < 1`` or a layer saw no input.
    """
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}.")
    stats: list[CaseStats | None] = [None] * len(layers)
    for _ in range(passes):
        try:
            for layer, value in zip(layers, stats):
                layer.collect = [] if layer.prior < 1.0 else None
                layer.case_stats = value
            with torch.no_grad():
                run()
            new: list[CaseStats | None] = []
            for layer in layers:
                if layer.collect is None:
                    new.append(None)
                    continue
                if not layer.collect:
                    raise ValueError("a normalisation layer saw no input during the statistics pass.")
                count, mean, m2 = layer.collect
                new.append((mean.float(), (m2 / count).float(), int(count)))
            stats = new
        finally:
            for layer in layers:
                layer.collect = None
                layer.case_stats = None
    return stats


@contextmanager
def captured_statistics(layers: Sequence[AdaptiveBatchNorm]) -> Iterator[None]:
    """Within the context, the first forward of each layer that uses its input's statistics (``prior < 1``) takes
    them from its input batch, as BatchNorm in training mode does (biased variance), but detached, and keeps them as
    its fixed case statistics for every later forward in the context; on exit the layers use their inputs' statistics
    again.

    When the first forward is one batch of all the parts of a case (e.g. the patches of a volume), every layer gets
    exactly the statistics BatchNorm in training mode computes on that batch, deep layers included (the statistics
    of a network normalised throughout with the pooled statistics), in one pass; and that forward, if it carries a
    gradient, gives the gradient of the fixed statistics (the statistics are constants).
    """
    try:
        for layer in layers:
            layer.capture = layer.prior < 1.0
            layer.case_stats = None
        yield
    finally:
        for layer in layers:
            layer.capture = False
            layer.case_stats = None
