"""What one case is to an adapter: a whole input (an image, or a volume that fits), or a volume seen through patches.

A method's update is written once, as gradients of a loss over the *parts* of the case (:class:`CaseParts`): for a
whole input there is one part, the input itself, and the update is exactly the published one; for a volume adapted on
patches (:class:`~monai_tta.inferers.SlidingWindowAdapter`) the parts are patches, and the gradient of the case is the
mean of the patch gradients, each patch's graph freed before the next one is built (so the peak memory stays that of
one patch's forward and backward pass).

A :class:`Case` is the per-call plan the adapter follows: how the input is prepared (padded), which statistics the
BatchNorm layers use while the case is adapted, which parts the update sees, and how the prediction is made.
:class:`WholeCase` is the default; the sliding-window inferer provides the volume plan.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

import torch
from torch import nn

from monai_tta.gradients import param_grads
from monai_tta.padding import network_divisor, pad_to_multiple

if TYPE_CHECKING:
    from monai_tta.adapters.base import Adapter, AdapterState

__all__ = ["CaseParts", "Case", "WholeCase"]

#: index of a part in a ``(B, C, *spatial)`` input.
PartIndex = tuple[slice, ...]


class CaseParts:
    """The parts of one case that an update computes its gradients on.

    Args:
        slices: one index per part into the ``(B, C, *spatial)`` input (spatial slices are prefixed with the batch and
            channel axes); ``None`` is the whole input as a single part.
    """

    def __init__(self, slices: Sequence[PartIndex] | None = None) -> None:
        self.whole = slices is None
        self.slices: list[PartIndex] = [(slice(None),)] if slices is None else [self._full(s) for s in slices]

    @staticmethod
    def _full(index: PartIndex) -> PartIndex:
        index = tuple(index)
        everything = (slice(None), slice(None))
        return index if len(index) > 2 and index[:2] == everything else (*everything, *index)

    def __len__(self) -> int:
        return len(self.slices)

    def __iter__(self) -> Iterator[PartIndex]:
        return iter(self.slices)

    def take(self, x: torch.Tensor, index: PartIndex) -> torch.Tensor:
        """Part ``index`` of ``x`` (``x`` itself for the whole case)."""
        return x if self.whole else x[index]

    def grads(
        self, loss_fn: Callable[[PartIndex], torch.Tensor | None], params: Sequence[torch.Tensor]
    ) -> tuple[list[torch.Tensor] | None, torch.Tensor | None, int]:
        """Gradients of the case loss: the mean over the parts of ``grad loss_fn(part)``.

        Each part's loss is differentiated (:func:`~monai_tta.gradients.param_grads`, which frees its graph) before the
        next part's forward runs, so at most one part's graph is alive. A part whose ``loss_fn`` returns ``None`` is
        skipped (e.g. SAR's unreliable samples). With a single part the gradient and loss are returned unchanged
        (no host synchronisation, bit for bit the whole-input update).

        Args:
            loss_fn: the loss of one part, given its index (use :meth:`take` to cut tensors).
            params: the parameters to differentiate.

        Returns:
            the mean gradients (``None`` if every part was skipped), the mean loss (detached, or ``None``) and the
            number of parts used.
        """
        total: list[torch.Tensor] | None = None
        loss_sum: torch.Tensor | None = None
        used = 0
        for index in self.slices:
            loss = loss_fn(index)
            if loss is None:
                continue
            grads = param_grads(loss, params)
            used += 1
            if total is None:
                total, loss_sum = grads, loss.detach()
            else:
                torch._foreach_add_(total, grads)
                loss_sum = loss_sum + loss.detach()
        if total is not None and used > 1:
            torch._foreach_div_(total, float(used))
            loss_sum = loss_sum / used
        return total, loss_sum, used


class Case:
    """The plan of one adapter call; the default methods describe a whole-input case without padding."""

    #: whether the update sees the whole input (then a method may report the forward made during its update).
    whole: bool = True

    def prepare(self, inputs: torch.Tensor) -> torch.Tensor:
        """The tensor the update and the prediction run on."""
        return inputs

    def statistics(self, state: AdapterState, network: nn.Module, x: torch.Tensor) -> AbstractContextManager:
        """A context within which the BatchNorm layers use the case's statistics (default: each input's own)."""
        return nullcontext()

    def parts(self, x: torch.Tensor) -> CaseParts:
        """The parts the update computes its gradients on."""
        return CaseParts()

    def predict(self, adapter: Adapter, state: AdapterState, x: torch.Tensor, network: nn.Module) -> torch.Tensor:
        """The reported prediction (under ``no_grad``): the method's own."""
        return adapter.predict(state, x, network)

    def finish(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits returned to the caller."""
        return logits


class WholeCase(Case):
    """A whole input, padded up to the size multiple the network needs and cropped back (inputs of any size work).

    Args:
        network: the network (its divisor is read by :func:`~monai_tta.padding.network_divisor`).
        divisor: overrides the network's divisor (an int or one per spatial axis); ``None`` reads it.
        mode: padding mode (``"replicate"``: border values repeated, so the padding adds no new intensities to the
            per-image statistics; our choice).
    """

    def __init__(self, network: nn.Module, divisor: int | Sequence[int] | None = None, mode: str = "replicate") -> None:
        self.network, self.divisor, self.mode = network, divisor, mode
        self._crop: PartIndex | None = None

    def prepare(self, inputs: torch.Tensor) -> torch.Tensor:
        dims = inputs.dim() - 2
        if self.divisor is None:
            divisor = network_divisor(self.network, dims)
        else:
            divisor = tuple(self.divisor) if isinstance(self.divisor, Sequence) else (int(self.divisor),) * dims
        x, self._crop = pad_to_multiple(inputs, divisor, self.mode)
        return x

    def finish(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self._crop is None else logits[self._crop]
