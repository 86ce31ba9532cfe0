"""Test-time adaptation of volumes: patch-wise update, per-volume statistics, MONAI sliding-window prediction.

:class:`SlidingWindowAdapter` wraps any patch-capable adapter (TENT, SAR, GraTa, NormAdapt, source-only) as a MONAI
``Inferer`` with the arguments of MONAI's ``SlidingWindowInferer``, so that replacing the ``inferer`` of a zoo-style
``inference.json`` with it adds test-time adaptation and changes nothing else. One call is one case (a volume):

1. **Statistics** (only when some BatchNorm layer uses the input's statistics: ``"image"``, ``"mix"``, ``"warmup"``
   regimes): the per-image statistics of the 2D methods become per-*volume* statistics, pooled for every BatchNorm
   layer over a set of windows of ``roi_size``: the statistics that BatchNorm in training mode computes on the batch
   of those windows. ``stats_from="patches"`` (default) pools them over the ``num_patches`` patches the update is
   computed on (an estimate of the whole volume's from a sample of it); ``"tiles"`` over every tile of the
   non-overlapping grid (each voxel once, but where the last tile of an axis is shifted to end at the border: the
   whole volume, at the cost of a source-only prediction without overlap). When the windows fit in one batch of
   ``sw_batch_size`` they are one forward and every layer's statistics are exact; otherwise ``stats_passes`` no-grad
   passes over batches of them estimate them (:func:`~monai_tta.norms.pooled_statistics`: exact for the first
   BatchNorm layer of every path). With ``"patches"`` and the patches in one batch of the update
   (``num_patches <= update_batch_size``), that forward is the update's first one
   (:func:`~monai_tta.norms.captured_statistics`): the statistics cost nothing extra. During the update and the
   prediction every patch and window is normalised with these fixed statistics (no gradient flows through them,
   unlike the 2D update where the statistics of the image carry the gradient).
2. **Update**: the method's rule with its gradients averaged over ``num_patches`` patches of the network's ``roi_size``
   (:func:`~monai_tta.inferers.patches.sample_patches`: grid tiles or seeded random positions), forwarded in batches of
   ``update_batch_size`` patches; each batch's forward-backward graph is freed before the next batch runs, so the extra
   peak memory is that of one batch. The patches are sampled once per case and shared by all the passes of the update
   (GraTa's two gradients, SAR's two).
3. **Prediction**: MONAI's ``SlidingWindowInferer`` over the whole volume with the adapted weights fixed and the fixed
   statistics, under ``no_grad`` (the logits are detached), so the prediction does not depend on the order or the
   batching of the windows.

The adapter runs the volume as one case with this plan (:class:`VolumeCase`, passed to
:meth:`~monai_tta.adapters.Adapter.adapt_and_predict`): its setting, resets and guards apply unchanged.

A volume smaller than ``roi_size`` is padded as MONAI's sliding window pads it and the output is cropped back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import Any, ClassVar

import torch
from monai.inferers import Inferer, SlidingWindowInferer
from monai.utils import BlendMode, PytorchPadMode, fall_back_tuple, look_up_option
from torch import nn

from monai_tta.adapters.base import Adapter
from monai_tta.adapters.cases import Case, CaseParts
from monai_tta.adapters.state import AdapterState
from monai_tta.guards import SafeChoice
from monai_tta.guards.source import source_model
from monai_tta.inferers.patches import PATCH_SAMPLING, STATS_SOURCES, sample_patches, window_slices
from monai_tta.norms import (
    captured_statistics,
    case_statistics,
    per_sample_stats,
    pooled_statistics,
    statistics_prior,
)
from monai_tta.padding import network_divisor, pad_to_size

__all__ = ["SlidingWindowAdapter", "VolumeCase", "add_safe"]


def add_safe(adapter: Adapter, safe: SafeChoice | dict | bool | None) -> None:
    """Add the safe choice ``safe`` (:meth:`SafeChoice.from_any`) to the guards of ``adapter`` when it has none and
    it adapts (an update, or statistics other than the source's); the networks it has seen get its state."""
    guard = SafeChoice.from_any(safe)
    adapts = adapter.uses_optimizer or adapter.steps > 0 or adapter.norm.source_weight(1) < 1.0
    if guard is None or not adapts or any(isinstance(g, SafeChoice) for g in adapter.guards):
        return
    adapter.guards = (*adapter.guards, guard)
    for network in adapter.networks():
        adapter.state_for(network).guards.append(guard.init_state())


class SlidingWindowAdapter(Inferer):
    """Adapt a network to each volume on patches, then predict the whole volume with MONAI's sliding window.

    Args:
        adapter: the adaptation method (its ``setting``, optimizer, ``params``, ``norm`` apply unchanged).
        roi_size: window (and patch) size, as ``SlidingWindowInferer``'s (``-1`` or missing axes take the volume's).
        sw_batch_size: windows per forward in the statistics passes and the prediction.
        overlap: window overlap of the prediction (the statistics use the patches or the non-overlapping tiles).
        mode: blending of the prediction's windows, ``"gaussian"`` or ``"constant"``.
        num_patches: patches the update is computed on; ``None``: every tile of the non-overlapping grid
            (``"grid"`` only). Default 4 (our choice: a fixed cost per volume whatever its size, the measured
            trade-off in ``docs/benchmarks/README.md``).
        patch_sampling: ``"grid"`` (evenly spaced tiles of the non-overlapping grid) or ``"random"`` (seeded).
        stats_from: where the per-volume BatchNorm statistics are pooled from: ``"patches"`` (the update's
            ``num_patches`` patches; default, our choice: no extra pass when they fit in one update batch) or
            ``"tiles"`` (every tile of the non-overlapping grid: the whole volume, one more no-grad pass).
        update_batch_size: patches per forward (and backward) of the update; ``None``: ``sw_batch_size``. The extra
            peak memory of the update is that of one such batch's forward and backward.
        stats_passes: statistics passes when the statistics' windows do not fit in one batch of ``sw_batch_size``
            (see the module docstring; 1 by default, our choice: exact for the first BatchNorm layer of every path,
            approximate deeper; as many passes as BatchNorm layers make it exact).
        stats_after_update: recompute the volume statistics with the updated weights before the prediction (one more
            pass; the 2D methods predict with the statistics of the updated network). Default ``False``, our choice:
            one update step moves the statistics very little and the pass costs as much as a source-only prediction.
        seed: seed of the random patch positions.
        safe: the label-free choice of each volume's prediction (:class:`~monai_tta.guards.SafeChoice`: the method's,
            the source model's, the adapted weights with source, mixed or volume statistics), added to the adapter's
            guards when it has none: ``None`` (default) the class's :attr:`default_safe` (``True``: on, at its
            defaults; issue 18: on the embedded content sites every method falls far below the source model
            without it), ``False`` the adapter as it is, a dict or a ``SafeChoice`` that choice. An adapter that
            does not adapt (source statistics and no update, e.g. ``SourceOnly``) is left as it is.
        score_patches: how many of the update's patches (evenly spaced among them) the guards score their
            candidates on (the safe choice, the collapse safeguard's probe); ``None``: all. Default 2 (our choice: the
            candidates' forwards then cost about half an update, within the 1.5x of issue 18).
        kwargs: other arguments of MONAI's ``SlidingWindowInferer`` (``sigma_scale``, ``padding_mode``, ``cval``,
            ``sw_device``, ``device``, ``progress``, ...).

    Raises:
        ValueError: for an adapter that cannot adapt on patches (VPTTA), an unknown ``mode``, ``patch_sampling`` or
            ``stats_from``, ``num_patches < 1``, ``update_batch_size < 1`` or ``stats_passes < 1``.
    """

    #: the safe choice when ``safe`` is not given (see ``safe``).
    default_safe: ClassVar[SafeChoice | dict | bool] = True

    def __init__(
        self,
        adapter: Adapter,
        roi_size: Sequence[int] | int,
        sw_batch_size: int = 1,
        overlap: Sequence[float] | float = 0.25,
        mode: BlendMode | str = BlendMode.GAUSSIAN,
        num_patches: int | None = 4,
        patch_sampling: str = "grid",
        stats_from: str = "patches",
        update_batch_size: int | None = None,
        stats_passes: int = 1,
        stats_after_update: bool = False,
        seed: int = 0,
        safe: SafeChoice | dict | bool | None = None,
        score_patches: int | None = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if not isinstance(adapter, Adapter):
            raise ValueError(f"adapter must be a monai_tta Adapter, got {type(adapter).__name__}.")
        add_safe(adapter, self.default_safe if safe is None else safe)
        if not adapter.supports_patches:
            raise ValueError(
                f"{type(adapter).__name__} cannot adapt a volume on patches; call it on the whole volume "
                "(it is padded to the network's size multiple) instead of through SlidingWindowAdapter."
            )
        if num_patches is not None and num_patches < 1:
            raise ValueError(f"num_patches must be None or >= 1, got {num_patches}.")
        if stats_passes < 1:
            raise ValueError(f"stats_passes must be >= 1, got {stats_passes}.")
        if update_batch_size is not None and update_batch_size < 1:
            raise ValueError(f"update_batch_size must be None or >= 1, got {update_batch_size}.")
        self.adapter = adapter
        self.roi_size = roi_size
        self.sw_batch_size = int(sw_batch_size)
        self.overlap = overlap
        self.mode = look_up_option(mode, BlendMode)
        self.num_patches = num_patches
        self.patch_sampling = look_up_option(patch_sampling, PATCH_SAMPLING)
        self.stats_from = look_up_option(stats_from, STATS_SOURCES)
        self.update_batch_size = int(update_batch_size or sw_batch_size)
        self.stats_passes = int(stats_passes)
        self.stats_after_update = bool(stats_after_update)
        if score_patches is not None and score_patches < 1:
            raise ValueError(f"score_patches must be None or >= 1, got {score_patches}.")
        self.score_patches = score_patches
        self.padding_mode = look_up_option(kwargs.get("padding_mode", PytorchPadMode.CONSTANT), PytorchPadMode)
        self.cval = float(kwargs.get("cval", 0.0))
        self.generator = torch.Generator().manual_seed(seed)
        self.inferer = SlidingWindowInferer(roi_size, sw_batch_size, overlap, mode, **kwargs)

    # ----------------------------------------------------------------- the adapter's interface, forwarded
    def set_domain(self, domain: Any) -> None:
        """Forwarded to the adapter."""
        self.adapter.set_domain(domain)

    def reset(self, network: nn.Module | None = None) -> None:
        """Forwarded to the adapter."""
        self.adapter.reset(network)

    @property
    def last_stats(self) -> dict[str, Any]:
        """The adapter's statistics of the last volume."""
        return self.adapter.last_stats

    def n_params(self, network: nn.Module) -> int:
        """Forwarded to the adapter."""
        return self.adapter.n_params(network)

    def state_for(self, network: nn.Module) -> AdapterState:
        """Forwarded to the adapter."""
        return self.adapter.state_for(network)

    def state_dict(self, network: nn.Module) -> dict[str, Any]:
        """Forwarded to the adapter."""
        return self.adapter.state_dict(network)

    def load_state_dict(self, network: nn.Module, values: dict[str, Any]) -> None:
        """Forwarded to the adapter."""
        self.adapter.load_state_dict(network, values)

    # ----------------------------------------------------------------- the call
    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Adapt ``network`` to the volume ``inputs`` ``(B, C, *spatial)`` (one case) and predict all of it.

        Args:
            inputs: the volume (not modified); a ``MetaTensor`` keeps its metadata in the output.
            network: the network (its normalisation layers are converted on first use).
            args: unused (``Inferer`` signature).
            kwargs: unused.

        Raises:
            ValueError: as the adapter's call does, and if ``roi_size`` is not a multiple of the size the network
                needs.
        """
        return self.adapter.adapt_and_predict(inputs, network, VolumeCase(self, network))


class VolumeCase(Case):
    """The plan of one volume in :class:`SlidingWindowAdapter` (see its module docstring)."""

    whole = False

    def __init__(self, owner: SlidingWindowAdapter, network: nn.Module) -> None:
        self.owner, self.network = owner, network
        self._crop: tuple[slice, ...] | None = None
        self._parts: CaseParts | None = None
        self._roi: tuple[int, ...] = ()

    def prepare(self, inputs: torch.Tensor) -> torch.Tensor:
        owner = self.owner
        roi = tuple(fall_back_tuple(owner.roi_size, inputs.shape[2:]))
        divisor = network_divisor(self.network, len(roi))
        if any(r % d for r, d in zip(roi, divisor)):
            raise ValueError(
                f"roi_size {roi} is not a multiple of {divisor}, the size {type(self.network).__name__} needs; "
                "choose a roi_size divisible by it."
            )
        x, self._crop = pad_to_size(inputs, roi, mode=owner.padding_mode, value=owner.cval)
        self._roi = roi
        slices = sample_patches(x.shape[2:], roi, owner.num_patches, owner.patch_sampling, owner.generator)
        self._parts = CaseParts(slices, batch_size=owner.update_batch_size)
        return x

    def _windows(self, x: torch.Tensor) -> list[tuple[slice, ...]]:
        """The windows the volume's statistics are pooled over: the update's patches or the non-overlapping tiles."""
        if self.owner.stats_from == "patches" and self._parts is not None:
            return self._parts.slices
        return [(slice(None), slice(None), *w) for w in window_slices(x.shape[2:], self._roi, 0.0)]

    def _pooled(self, state: AdapterState, network: nn.Module, x: torch.Tensor) -> AbstractContextManager:
        """Fixed statistics pooled over the windows by no-grad passes (one exact forward when they fit in a batch)."""
        norms, windows, batch = state.norms, self._windows(x), self.owner.sw_batch_size
        if len(windows) <= batch:  # one batch: BatchNorm's training-mode statistics of all the windows, every layer

            def run() -> None:
                network(torch.cat([x[w] for w in windows]))

            return case_statistics(norms, pooled_statistics(norms, run, 1))

        def run_chunks() -> None:
            with per_sample_stats(norms):  # first pass: each window with its own statistics
                for start in range(0, len(windows), batch):
                    network(torch.cat([x[w] for w in windows[start : start + batch]]))

        return case_statistics(norms, pooled_statistics(norms, run_chunks, self.owner.stats_passes))

    @contextmanager
    def _captured(self, state: AdapterState, network: nn.Module, x: torch.Tensor) -> Iterator[None]:
        """The statistics of the batch of all the patches, taken from the first forward of the case when that forward
        is this batch (the update's first: used when the patches fit in one update batch), else from a no-grad forward
        of it run just before that first forward (NormAdapt, whose first forward is the prediction's)."""
        parts = self._parts
        every = tuple(parts.slices)
        handle = None

        def first_forward(module: nn.Module, args: tuple[Any, ...]) -> None:
            handle.remove()
            batch = parts.take(x, every)  # the same object as the update's first batch when it is that batch
            if not args or args[0] is not batch:
                with torch.no_grad():
                    module(batch)

        with ExitStack() as stack:
            stack.enter_context(captured_statistics(state.norms))
            handle = network.register_forward_pre_hook(first_forward)
            stack.callback(handle.remove)
            yield

    def statistics(self, state: AdapterState, network: nn.Module, x: torch.Tensor) -> AbstractContextManager:
        if not any(layer.prior < 1.0 for layer in state.norms):
            return nullcontext()
        owner = self.owner
        if owner.stats_from == "patches" and len(self._parts) <= min(owner.sw_batch_size, owner.update_batch_size):
            return self._captured(state, network, x)
        return self._pooled(state, network, x)

    def parts(self, x: torch.Tensor) -> CaseParts:
        return self._parts if self._parts is not None else CaseParts()

    def predict(
        self,
        state: AdapterState,
        x: torch.Tensor,
        network: nn.Module,
        method_predict: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """MONAI's sliding window over the whole volume with the adapted weights and the fixed statistics (the
        method's own prediction of a whole input, ``method_predict``, is not used)."""
        refresh = self.owner.stats_after_update and self.owner.adapter.steps > 0
        refresh = refresh and any(layer.prior < 1.0 for layer in state.norms)
        with self._pooled(state, network, x) if refresh else nullcontext(), torch.no_grad():
            return self.owner.inferer(x, network).detach()

    def scored_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The patches the guards score on: ``score_patches`` of the update's, evenly spaced, concatenated."""
        slices = self._parts.slices
        k = self.owner.score_patches
        if k is not None and k < len(slices):
            step = len(slices) / k
            slices = [slices[int(i * step)] for i in range(k)]
        return torch.cat([x[index] for index in slices])

    def candidate_predict(
        self, state: AdapterState, x: torch.Tensor, network: nn.Module, prior: float | None
    ) -> torch.Tensor:
        """The sliding-window prediction of a guard's candidate: the source model (``prior=None``), or the adapted
        weights with statistics ``prior * source + (1 - prior) * volume``; the volume's statistics are the case's
        (captured or pooled) when the layers hold them, else pooled over the update's patches now."""
        norms = state.norms
        with torch.no_grad():
            if prior is None:
                with source_model(state.params, state.snapshot, norms):
                    return self.owner.inferer(x, network).detach()
            with statistics_prior(norms, prior):
                pool = prior < 1.0 and any(layer.case_stats is None for layer in norms)
                with self._pooled(state, network, x) if pool else nullcontext():
                    return self.owner.inferer(x, network).detach()

    def finish(self, logits: torch.Tensor) -> torch.Tensor:
        self._parts = None
        return logits if self._crop is None else logits[self._crop]
