"""The adaptive normalisation layer: a BatchNorm whose statistics the adapter chooses.

:func:`convert_norms` swaps every BatchNorm layer of a network for an :class:`AdaptiveBatchNorm` that shares the layer's
parameters and buffers (so the state-dict keys and values stay the same) and never updates the running statistics.
:func:`layer_settings` sets attributes of the layers within a context (the helpers :func:`per_sample_stats`,
:func:`statistics_prior` and :func:`recording_stats`, and the volume statistics of :mod:`monai_tta.norms.volume`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "AdaptiveBatchNorm",
    "CaseStats",
    "convert_norms",
    "norm_layers",
    "layer_settings",
    "per_sample_stats",
    "statistics_prior",
    "recording_stats",
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


@contextmanager
def layer_settings(
    layers: Sequence[AdaptiveBatchNorm],
    values: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    on_exit: Mapping[str, Any] | None = None,
) -> Iterator[None]:
    """Within the context, set attributes of ``layers``; on exit, set ``on_exit`` on every layer, or (``None``) give
    each attribute set back its value from before the context.

    Args:
        layers: the adaptive layers.
        values: ``{attribute: value}`` for every layer, or one such mapping per layer.
        on_exit: ``{attribute: value}`` set on every layer on exit (``None``: restore the previous values).
    """
    per_layer = [values] * len(layers) if isinstance(values, Mapping) else list(values)
    saved = [{name: getattr(layer, name) for name in value} for layer, value in zip(layers, per_layer)]
    try:
        for layer, value in zip(layers, per_layer):
            for name, item in value.items():
                setattr(layer, name, item)
        yield
    finally:
        for layer, old in zip(layers, saved):
            for name, item in (old if on_exit is None else on_exit).items():
                setattr(layer, name, item)


def per_sample_stats(layers: Sequence[AdaptiveBatchNorm]) -> AbstractContextManager[None]:
    """Within the context, ``layers`` compute input statistics per sample, so a batch of ``B`` independent views
    normalises exactly as ``B`` separate forwards; the previous setting is restored on exit."""
    return layer_settings(layers, {"per_sample": True})


def statistics_prior(norms: Sequence[AdaptiveBatchNorm], prior: float) -> AbstractContextManager[None]:
    """Within the context, the layers with source statistics normalise with ``prior * source + (1 - prior) * image``
    (the others keep their inputs' own statistics); their previous weights are restored on exit."""
    return layer_settings(norms, [{"prior": prior if layer.has_source_stats else layer.prior} for layer in norms])


def recording_stats(layers: Sequence[AdaptiveBatchNorm]) -> AbstractContextManager[None]:
    """Within the context, ``layers`` keep ``(x, mean, var)`` of their last forward in ``recorded`` (for statistics
    alignment losses); on exit recording stops and the records are dropped."""
    return layer_settings(layers, {"record": True}, on_exit={"record": False, "recorded": None})
