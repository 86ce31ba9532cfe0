"""GraTa: gradient alignment with a cosine-based dynamic learning rate (Chen et al., AAAI 2025; methods spec §2).

The default (``mode="exact"``) is the published update. Its cost per case is fixed by the algorithm: 9 forward passes
(entropy, 6 pseudo-label views, strong view, final prediction) and 2 backward passes. What this implementation does to
make that cheap without changing the result:

- on an accelerator the 6 pseudo-label views run as batched forwards (2 views each by default, ``view_chunk``) with
  per-sample normalisation statistics (``view_mode="batched"``), which gives exactly what 6 separate forwards give (a
  plain batched BatchNorm would pool the statistics of the views and change the result); ``view_mode="joint"`` also
  puts the strong view in one batch with all the views (still exact, but its backward then runs over all 7 samples).
  On a CPU, where the cost is mostly arithmetic rather than launches, batching saves little or nothing (measured on 2
  threads: from 12% faster to 5% slower than one forward per view, depending on the network and the image size) and
  raises the peak memory, so the default ``view_mode="auto"`` batches the views on accelerators and runs them one by
  one on CPUs;
- on a CUDA device the update and the prediction are replayed as CUDA graphs (``cuda_graph``): at batch size 1 an
  update launches about 2,000 kernels and the host's launch overhead, not the GPU, sets the pace (measured on an
  H100 with ResUNet-34 at 512x512: 27.5 ms per case with graphs, 86.6 ms without, 89.5 ms for one eager forward per
  view; ``docs/benchmarks/gpu.md``);
- gradients are taken with :func:`torch.autograd.grad` for the updated parameters only, and every other parameter
  has ``requires_grad=False`` during the update, so no weight gradient of a frozen layer is ever computed;
- one backup copy of the updated parameters (to restore ``theta`` exactly after the perturbation), nothing else;
- one host-device synchronisation per case: the cosine (which sets the learning rate, a Python float) and the two
  loss values come back in a single transfer.

``mode="approximate"`` is **not the published algorithm**: it is a cheaper variant for CPUs and long streams, see
:class:`GraTa`.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.utils import look_up_option
from torch import nn

from monai_tta.adapters.base import Adapter, AdapterState, set_lr
from monai_tta.adapters.cases import PartGroup
from monai_tta.adapters.grata.graphs import CapturedCall
from monai_tta.adapters.settings import Setting
from monai_tta.adapters.stats import StatKeys
from monai_tta.gradients import global_cosine, perturb, restore, set_grads
from monai_tta.losses import activate, consistency_loss, entropy_loss, pseudo_target
from monai_tta.norms import AdaptiveBatchNorm, per_sample_stats
from monai_tta.transforms.intensity import StrongStyle
from monai_tta.transforms.spatial import FLIP_ROT_VIEWS, VIEW_DIMS, apply_view, invert_view, views_preserve_shape

__all__ = ["GraTa", "cosine_lr", "GRATA_MODES", "GRATA_VIEW_MODES"]

#: ``"exact"``: the published update; ``"approximate"``: the cheaper variant (not the published algorithm).
GRATA_MODES = ("exact", "approximate")
#: how the pseudo-label views run: ``"auto"`` (batched on accelerators, separate on CPUs), one batched forward, one
#: batched forward with the strong view, or one forward per view. All give the same result.
GRATA_VIEW_MODES = ("auto", "batched", "joint", "separate")
# keys of the CUDA graph state in ``AdapterState.extra``
_GRAPH_UPDATE, _GRAPH_PREDICT, _GRAPH_FAILED = "graph_update", "graph_predict", "graph_failed"


def cosine_lr(base_lr: float, cosine: float) -> float:
    """GraTa's dynamic learning rate ``base_lr * (cos + 1)^2 / 4`` (0 at cos = -1, base_lr / 4 at 0, base_lr at 1)."""
    return base_lr * (cosine + 1.0) ** 2 / 4.0


class GraTa(Adapter):
    """Gradient-alignment test-time adaptation.

    For each case ``x`` (one update):

    1. ``g_aux = grad L_ent(theta; x)`` (sigmoid entropy).
    2. ``theta' = theta - g_aux`` (the raw gradient: no learning rate).
    3. At ``theta'``: soft pseudo-label = mean sigmoid of the 6 flip/rotation views (logits inverse-mapped first),
       ``g_pse = grad BCEWithLogits(f(strong(x)), pseudo)`` at ``theta'``.
    4. ``cos`` = one cosine over all updated parameters flattened together.
    5. Restore ``theta``, set the lr to ``base * (cos + 1)^2 / 4``, one optimizer step with ``g_pse``.
    6. Predict with the updated weights.

    The published method is multi-label (``activation="sigmoid"``, the default; above). For networks whose classes are
    mutually exclusive (``activation="softmax"``: MONAI bundles ending in softmax/argmax, background channel included;
    our adaptation) step 1 uses the softmax entropy, the pseudo-label is the one-hot argmax of the views' mean softmax
    probability and the loss of step 3 is the cross-entropy against it.

    Defaults are the reference's: BatchNorm affine parameters (``params="norm"``: on networks with other normalisation
    layers, their affine parameters too, our choice), per-image statistics, Adam lr 1e-4 betas (0.9, 0.999), reset at
    each domain change (continual within a domain).

    Volumes (our choices, ``docs/methods/3d.md``): the views act on the first two spatial axes (the axial plane of a
    ``(B, C, H, W, D)`` volume, :data:`~monai_tta.transforms.spatial.VIEW_DIMS`), never on the through-plane axis;
    the strong augmentation works unchanged in 3D. Through :class:`~monai_tta.inferers.SlidingWindowAdapter` both
    gradients are means over the same patches and the strong view is drawn once per volume.

    ``mode="approximate"`` (opt-in, **not the published algorithm**) keeps steps 1, 2, 4 and 5 but

    - takes the soft pseudo-label from the forward already made in step 1 (``sigmoid`` of the entropy pass's logits:
      one view, at ``theta`` instead of ``theta'``) instead of 6 new forwards at ``theta'``;
    - runs the strong pass (forward and backward at ``theta'``) at ``strong_scale`` of the image size (default 0.5:
      a quarter of the pixels), on the strong view and the pseudo-label both area-downsampled;
    - by default reports the entropy pass's forward (the prediction *before* the update, as TENT does) instead of a
      new forward with the updated weights (``predict_after_update=True`` adds that forward back).

    It costs about 1.25 forwards and 1.25 backwards of the full image per case (one more forward with
    ``predict_after_update``) instead of 9 and 2. In the ``"episodic"`` setting with ``predict_after_update=False`` the
    reported prediction is that of the source model with per-image statistics (the update only affects later cases).
    Its Dice cost against the exact mode is measured by ``python -m monai_tta.bench`` (``grata_approx``).

    Args:
        strong_augment: callable on a ``(B, C, H, W)`` tensor giving the strong view; default :class:`StrongStyle`
            drawing from the adapter's seeded generator. A callable that accepts ``generator=`` receives it.
        views: names of the pseudo-label views (default the six of the reference).
        view_mode: ``"batched"`` runs the views as one batched forward with per-sample statistics (same result as
            separate forwards, fewer launches); ``"joint"`` runs the views and the strong view as one batched forward
            with per-sample statistics (same result; the backward covers all the samples of the batch); ``"separate"``
            runs one forward per view as the reference does; ``"auto"`` (default) is ``"batched"`` for inputs on an
            accelerator and ``"separate"`` for inputs on the CPU. Non-square inputs and batches of several images
            always use separate forwards.
        mode: ``"exact"`` (the published algorithm) or ``"approximate"`` (see above).
        predict_after_update: report a new forward with the updated weights (``True``) or the entropy pass's forward
            made before the update (``False``). ``None``: ``True`` in the exact mode, ``False`` in the approximate one.
            ``False`` with ``mode="exact"`` is not the published algorithm either.
        view_chunk: with batched views, how many views one forward takes (``None``: all of them). The default, 2,
            keeps the peak memory of the view passes near that of the gradient passes; measured on an H100 with
            ResUNet-34 at 512x512 and CUDA graphs, all 6 at once was 7% faster and took 2.6 times the memory
            (``docs/benchmarks/gpu.md``). The result does not depend on it.
        cuda_graph: replay the update and the prediction as CUDA graphs
            (:class:`~monai_tta.adapters.grata.graphs.CapturedCall`): captured on the first case of each input shape,
            then one launch each instead of thousands, which is what bounds a batch-1 update on a GPU. ``None``
            (default): for inputs on a CUDA device, falling back to eager calls with a warning if the capture fails
            (e.g. a network that synchronises with the host); ``True``: likewise but a failed capture raises;
            ``False``: never. Ignored for inputs not on CUDA. Same result as eager calls; the graphs keep their memory
            between cases.
        strong_scale: spatial scale of the strong pass in the approximate mode (``None``: 0.5; the exact mode always
            uses 1). The scaled size is rounded to a multiple of the network's ``size_divisor`` attribute when it has
            one (SmallUNet, ResUNet), and is never below twice it nor above the input size.
        kwargs: :class:`~monai_tta.adapters.base.Adapter` arguments.

    Raises:
        ValueError: for an unknown mode, view mode or view name, a ``strong_scale`` outside ``(0, 1]`` (or other
            than 1 in the exact mode), or a ``view_chunk`` that is not a positive integer.
    """

    def __init__(
        self,
        strong_augment: Callable[..., torch.Tensor] | None = None,
        views: tuple[str, ...] = FLIP_ROT_VIEWS,
        view_mode: str = "auto",
        mode: str = "exact",
        predict_after_update: bool | None = None,
        strong_scale: float | None = None,
        view_chunk: int | None = 2,
        cuda_graph: bool | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("setting", Setting.DOMAIN)
        kwargs.setdefault("lr", 1e-4)
        super().__init__(**kwargs)
        for view in views:
            apply_view(torch.zeros(1, 1, 1, 1), view, VIEW_DIMS)
        self.views = tuple(views)
        self.view_mode = look_up_option(view_mode, GRATA_VIEW_MODES)
        self.mode = look_up_option(mode, GRATA_MODES)
        self.predict_after_update = (
            (self.mode == "exact") if predict_after_update is None else bool(predict_after_update)
        )
        if view_chunk is not None and (isinstance(view_chunk, bool) or int(view_chunk) != view_chunk or view_chunk < 1):
            raise ValueError(f"view_chunk must be None or a positive integer, got {view_chunk!r}.")
        self.view_chunk = None if view_chunk is None else int(view_chunk)
        self.cuda_graph = cuda_graph
        self.strong_augment = strong_augment if strong_augment is not None else StrongStyle()
        default_scale = 1.0 if self.mode == "exact" else 0.5
        self.strong_scale = default_scale if strong_scale is None else float(strong_scale)
        if not 0.0 < self.strong_scale <= 1.0 or (self.mode == "exact" and self.strong_scale != 1.0):
            raise ValueError(
                f"strong_scale must be in (0, 1] (and 1 in the exact mode), got {strong_scale} with mode={mode!r}."
            )

    def _strong(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.strong_augment, StrongStyle):
            return self.strong_augment(x, generator=self.generator)
        return self.strong_augment(x)

    def resolved_view_mode(self, inputs: torch.Tensor) -> str:
        """The view mode used for ``inputs``: ``"auto"`` resolves to ``"separate"`` on the CPU, else ``"batched"``;
        batching needs a single square image."""
        mode = self.view_mode
        if mode == "auto":
            mode = "separate" if inputs.device.type == "cpu" else "batched"
        if mode != "separate" and not (inputs.shape[0] == 1 and views_preserve_shape(inputs, VIEW_DIMS)):
            mode = "separate"
        return mode

    def _mean_probability(self, view_logits: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The pseudo-label: the views' probabilities averaged (in probability space), then
        :func:`~monai_tta.losses.pseudo_target` (soft for sigmoid, one-hot argmax for softmax)."""
        views = zip(view_logits, self.views)
        probs = [activate(invert_view(z.float(), v, VIEW_DIMS), self.activation) for z, v in views]
        return pseudo_target(torch.stack(probs).mean(0), self.activation)

    def pseudo_label(self, inputs: torch.Tensor, network: nn.Module, norms: list[AdaptiveBatchNorm]) -> torch.Tensor:
        """Pseudo-label: mean over the views of ``p(inverse_view(f(view(x))))`` (``p`` the :attr:`activation`; with
        softmax, the one-hot of its argmax), without gradient.

        When :meth:`resolved_view_mode` batches (a single square image, not on the CPU by default), all views run as
        one batch with per-sample statistics (identical to one forward per view); a batch of several images is one
        case whose statistics are shared, so its views always run separately.
        """
        with torch.no_grad():
            if self.resolved_view_mode(inputs) != "separate":
                chunk = self.view_chunk or len(self.views)
                logits = []
                with per_sample_stats(norms):
                    for start in range(0, len(self.views), chunk):
                        batch = torch.cat([apply_view(inputs, v, VIEW_DIMS) for v in self.views[start : start + chunk]])
                        logits += network(batch).split(1)
            else:
                logits = [network(apply_view(inputs, v, VIEW_DIMS)) for v in self.views]
            return self._mean_probability(logits)

    def _pseudo_loss(
        self, state: AdapterState, inputs: torch.Tensor, network: nn.Module, strong: torch.Tensor
    ) -> torch.Tensor:
        """Consistency loss of the strong view against the 6-view pseudo-label, both at the current (perturbed)
        weights: BCE (sigmoid) or cross-entropy (softmax)."""
        if self.resolved_view_mode(inputs) == "joint":
            batch = [apply_view(inputs, v, VIEW_DIMS) for v in self.views] + [strong]
            with per_sample_stats(state.norms):
                logits = network(torch.cat(batch))
            n = len(self.views)
            with torch.no_grad():
                pseudo = self._mean_probability(logits[:n].detach().split(1))
            return consistency_loss(logits[n:].float(), pseudo, self.activation)
        pseudo = self.pseudo_label(inputs, network, state.norms)
        return consistency_loss(network(strong).float(), pseudo, self.activation)

    def strong_size(self, spatial: Sequence[int], network: nn.Module) -> tuple[int, ...]:
        """Spatial size of the approximate mode's strong pass: a multiple of the network's ``size_divisor``, at least
        twice it (so the coarsest features keep more than one value per channel for per-image statistics), at most
        the input size (``strong_scale=1``: the input size).

        Args:
            spatial: the spatial size of the input.
            network: the adapted network (its ``size_divisor``, when it has one; else 1).
        """
        if self.strong_scale == 1.0:
            return tuple(int(s) for s in spatial)
        divisor = int(getattr(network, "size_divisor", 1) or 1)
        return tuple(min(max(int(round(s * self.strong_scale / divisor)), 2) * divisor, int(s)) for s in spatial)

    def uses_cuda_graph(self, inputs: torch.Tensor) -> bool:
        """Whether the update and the prediction of ``inputs`` run as CUDA graphs (``cuda_graph=None``: on CUDA)."""
        if inputs.device.type != "cuda":
            return False
        return True if self.cuda_graph is None else bool(self.cuda_graph)

    def _update_tensors(
        self, state: AdapterState, inputs: torch.Tensor, strong: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Steps 1-4 as tensors, with no host synchronisation (so they can be captured in a CUDA graph).

        Returns:
            the entropy pass's logits, ``[cosine, entropy loss, pseudo-label loss]`` and ``g_pse`` (one per parameter);
            the parameters are back at ``theta``.
        """
        network, params = state.network(), state.params
        parts = self.case_parts(inputs)
        keep_logits = parts.whole or self.mode != "exact"
        aux_logits: list[torch.Tensor] = []

        def aux_fn(group: PartGroup) -> torch.Tensor:
            logits = network(parts.take(inputs, group))
            if keep_logits:
                aux_logits.append(logits.detach())
            return entropy_loss(logits.float(), self.activation)

        g_aux, aux_loss, _ = parts.grads(aux_fn, params)
        theta = perturb(params, g_aux, scale=-1.0)
        own = iter(aux_logits)

        def pse_fn(group: PartGroup) -> torch.Tensor:
            x, s = parts.take(inputs, group), parts.take(strong, group)
            if self.mode == "exact":
                return self._pseudo_loss(state, x, network, s)
            # approximate: the pseudo-label is the entropy pass's own prediction (one view, at theta)
            pseudo = activate(next(own).float(), self.activation)
            size = self.strong_size(x.shape[2:], network)
            if size != tuple(x.shape[2:]):
                s, pseudo = F.interpolate(s, size=size, mode="area"), F.interpolate(pseudo, size, mode="area")
            return consistency_loss(network(s).float(), pseudo_target(pseudo, self.activation), self.activation)

        g_pse, pse_loss, _ = parts.grads(pse_fn, params)
        restore(params, theta)
        scalars = torch.stack([global_cosine(g_aux, g_pse).float(), aux_loss, pse_loss])
        return (aux_logits[0] if parts.whole else inputs.new_zeros(0), scalars, *g_pse)

    def _captured(self, state: AdapterState, name: str, fn: Callable[..., Sequence[torch.Tensor]]) -> CapturedCall:
        runner = state.extra.get(name)
        if runner is None:  # the prediction replays right after the update, every case: one memory pool for both
            other = state.extra.get(_GRAPH_UPDATE) if name != _GRAPH_UPDATE else None
            runner = state.extra[name] = CapturedCall(fn, share_pool_with=other)
        return runner

    def _run(
        self, state: AdapterState, name: str, fn: Callable[..., Sequence[torch.Tensor]], *inputs: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """``fn(*inputs)``, as a CUDA graph when :meth:`uses_cuda_graph` (the outputs are then cloned). A capture
        that fails (e.g. a network that synchronises with the host) falls back to eager calls, with a warning."""
        patchwise = not self.case_parts(inputs[0]).whole
        if patchwise or not self.uses_cuda_graph(inputs[0]) or state.extra.get(_GRAPH_FAILED):
            return tuple(fn(*inputs))
        try:
            outputs = self._captured(state, name, fn)(*inputs)
        except RuntimeError as e:
            if self.cuda_graph:
                raise
            warnings.warn(f"GraTa: CUDA graph capture failed ({e}); running eagerly from now on.", stacklevel=3)
            state.extra[_GRAPH_FAILED] = True
            state.extra.pop(name, None)
            return tuple(fn(*inputs))
        return tuple(t.clone() for t in outputs)

    def adapt(
        self, state: AdapterState, inputs: torch.Tensor, network: nn.Module
    ) -> tuple[dict[str, Any], torch.Tensor | None]:
        params = state.params
        strong = self._strong(inputs)  # drawn on the host, outside any graph
        aux_logits, scalars, *g_pse = self._run(
            state, _GRAPH_UPDATE, functools.partial(self._update_tensors, state), inputs, strong
        )
        # the single device-to-host transfer of the update: the cosine sets the learning rate (a Python float)
        cosine, aux_value, pse_value = scalars.tolist()
        lr = cosine_lr(self.lr, cosine)
        set_lr(state.optimizer, lr)
        set_grads(params, g_pse)
        state.optimizer.step()
        stats = {
            StatKeys.AUX_LOSS: aux_value,
            StatKeys.PSEUDO_LOSS: pse_value,
            StatKeys.LOSS: pse_value,
            StatKeys.COSINE: cosine,
            StatKeys.LR: lr,
        }
        return stats, None if self.predict_after_update else aux_logits

    def predict(self, state: AdapterState, inputs: torch.Tensor, network: nn.Module) -> torch.Tensor:
        return self._run(state, _GRAPH_PREDICT, lambda x: (state.network()(x),), inputs)[0]
