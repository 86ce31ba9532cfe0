"""What one case is to an adapter: a whole input (an image, or a volume that fits), or a volume seen through patches.

A method's update is written once, as gradients of a loss over the *parts* of the case (:class:`CaseParts`): for a
whole input there is one part, the input itself, and the update is exactly the published one; for a volume adapted on
patches (:class:`~monai_tta.inferers.SlidingWindowAdapter`) the parts are patches, forwarded in groups (batches of
patches), and the gradient of the case is the mean of the patch gradients, each group's graph freed before the next one
is built (so the peak memory stays that of one group's forward and backward pass).

A :class:`Case` is the per-call plan the adapter follows: how the input is prepared (padded), which statistics the
BatchNorm layers use while the case is adapted, which parts the update sees, and how the prediction is made.
:class:`WholeCase` is the default; the sliding-window inferer passes its volume plan to
:meth:`~monai_tta.adapters.Adapter.adapt_and_predict`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from monai_tta.adapters.state import AdapterState
from monai_tta.gradients import param_grads
from monai_tta.norms import statistics_prior
from monai_tta.padding import network_divisor, pad_to_multiple

__all__ = ["PartIndex", "PartGroup", "CaseParts", "Case", "WholeCase"]

#: index of a part in a ``(B, C, *spatial)`` input.
PartIndex = tuple[slice, ...]
#: the parts one forward of an update takes, concatenated along the batch axis.
PartGroup = tuple[PartIndex, ...]
#: what a loss function of a group returns: its mean loss, ``(mean loss, number of parts it averages)``, or ``None``.
LossOfGroup = torch.Tensor | tuple[torch.Tensor, int] | None


class CaseParts:
    """The parts of one case that an update computes its gradients on, forwarded in groups.

    A method's loss function receives a *group* (a tuple of part indices) and cuts its tensors with :meth:`take`,
    which concatenates the group's parts along the batch axis: a group of ``c`` parts is one forward of batch ``c``
    (on a CPU, PyTorch's convolutions are several times faster per part at batch 2 or more than at batch 1).

    Args:
        slices: one index per part into the ``(B, C, *spatial)`` input (spatial slices are prefixed with the batch and
            channel axes); ``None`` is the whole input as a single part.
        batch_size: parts per group (the last group may hold fewer).

    Raises:
        ValueError: if ``batch_size < 1``.
    """

    def __init__(self, slices: Sequence[PartIndex] | None = None, batch_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.whole = slices is None
        self.slices: list[PartIndex] = [(slice(None),)] if slices is None else [self._full(s) for s in slices]
        self.groups: list[PartGroup] = [
            tuple(self.slices[i : i + batch_size]) for i in range(0, len(self.slices), batch_size)
        ]
        self._taken: tuple[torch.Tensor, PartGroup, torch.Tensor] | None = None

    @staticmethod
    def _full(index: PartIndex) -> PartIndex:
        index = tuple(index)
        everything = (slice(None), slice(None))
        return index if len(index) > 2 and index[:2] == everything else (*everything, *index)

    def __len__(self) -> int:
        return len(self.slices)

    def __iter__(self) -> Iterator[PartGroup]:
        return iter(self.groups)

    def only(self, groups: Sequence[PartGroup]) -> CaseParts:
        """These parts restricted to ``groups`` (e.g. the groups a filter kept), grouped as given."""
        if self.whole:
            return self
        subset = CaseParts([index for group in groups for index in group])
        subset.groups = [tuple(group) for group in groups]
        return subset

    def take(self, x: torch.Tensor, group: PartGroup) -> torch.Tensor:
        """The parts of ``group`` cut from ``x`` and concatenated along the batch axis (``x`` itself for the whole
        case). Taking the same group of the same tensor again returns the same tensor object."""
        if self.whole:
            return x
        taken = self._taken
        if taken is not None and taken[0] is x and taken[1] == group:
            return taken[2]
        batch = x[group[0]] if len(group) == 1 else torch.cat([x[index] for index in group])
        self._taken = (x, tuple(group), batch)
        return batch

    def grads(
        self, loss_fn: Callable[[PartGroup], LossOfGroup], params: Sequence[torch.Tensor]
    ) -> tuple[list[torch.Tensor] | None, torch.Tensor | None, int]:
        """Gradients of the case loss: the mean over the parts of ``grad loss(part)``.

        ``loss_fn(group)`` returns the mean loss of the group's parts (then each part weighs 1), or ``(loss,
        weight)`` where ``weight`` is the number of parts the loss averages over (e.g. SAR's reliable ones), or
        ``None`` to skip the group. Each group's loss is differentiated (:func:`~monai_tta.gradients.param_grads`,
        which frees its graph) before the next group's forward runs, so at most one group's graph is alive. The
        gradient is the weighted mean of the group gradients, i.e. the mean over the parts used. With a single group
        the gradient and loss are returned unchanged (no host synchronisation, bit for bit the whole-input update).

        Args:
            loss_fn: the loss of one group of parts, given the group (use :meth:`take` to cut tensors).
            params: the parameters to differentiate.

        Returns:
            the mean gradients (``None`` if every group was skipped), the mean loss (detached, or ``None``) and the
            number of parts used.
        """
        results: list[tuple[list[torch.Tensor], torch.Tensor, int]] = []
        for group in self.groups:
            out = loss_fn(group)
            if out is None:
                continue
            loss, weight = out if isinstance(out, tuple) else (out, len(group))
            results.append((param_grads(loss, params), loss.detach(), int(weight)))
        if not results:
            return None, None, 0
        if len(results) == 1:
            return results[0]
        used = sum(weight for _, _, weight in results)
        total = [g * (results[0][2] / used) for g in results[0][0]]
        loss_sum = results[0][1] * (results[0][2] / used)
        for grads, loss, weight in results[1:]:
            torch._foreach_add_(total, grads, alpha=weight / used)
            loss_sum = loss_sum + loss * (weight / used)
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

    def predict(
        self,
        state: AdapterState,
        x: torch.Tensor,
        network: nn.Module,
        method_predict: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """The reported prediction (under ``no_grad``): by default the method's own, ``method_predict(x)``."""
        return method_predict(x)

    def finish(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits returned to the caller."""
        return logits

    def scored_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The input the guards score candidate predictions on: the parts of the update, concatenated."""
        parts = self.parts(x)
        return x if parts.whole else torch.cat([x[index] for index in parts.slices])

    def candidate_predict(
        self, state: AdapterState, x: torch.Tensor, network: nn.Module, prior: float | None
    ) -> torch.Tensor:
        """The whole case's prediction (no gradient) by a guard's candidate: the adapted weights with statistics
        weight ``prior``, or the source model (``prior=None``). Default: one forward of ``x``."""
        from monai_tta.guards.source import source_model  # noqa: PLC0415 (the guards import the adapters' modules)

        with torch.no_grad():
            if prior is None:
                with source_model(state.params, state.snapshot, state.norms):
                    return network(x)
            with statistics_prior(state.norms, prior):
                return network(x)


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
