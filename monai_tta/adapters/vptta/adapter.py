"""VPTTA: visual prompt test-time adaptation with a low-frequency Fourier prompt (Chen et al., CVPR 2024; spec §3)."""

from __future__ import annotations

import copy
import weakref
from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from monai_tta.adapters.base import Adapter, AdapterState
from monai_tta.adapters.settings import Setting
from monai_tta.adapters.stats import StatKeys
from monai_tta.adapters.vptta.memory import PromptMemory
from monai_tta.adapters.vptta.prompt import FourierPrompt
from monai_tta.gradients import param_grads, set_grads
from monai_tta.losses import bn_alignment_loss
from monai_tta.norms import recording_stats, warmup_lambda
from monai_tta.norms.policy import NormRegime

__all__ = ["VPTTA"]

_PROMPT = "prompt"
_MEMORY = "memory"
_NEEDS_INIT = "needs_init"


def _first_conv_in_channels(network: nn.Module) -> int:
    for module in network.modules():
        if isinstance(module, _ConvNd):
            return int(module.in_channels)
    raise ValueError("cannot infer the input channels of the network (no convolution); pass in_channels.")


def _first_conv_spatial_dims(network: nn.Module) -> int:
    for module in network.modules():
        if isinstance(module, _ConvNd):
            return len(module.kernel_size)
    return 2


class VPTTA(Adapter):
    """Frozen network, warm-up BatchNorm statistics and a learnable low-frequency prompt initialised from a memory bank.

    For each case ``x`` (a batch is one case; the published protocol uses batch size 1), with ``t`` the number of cases
    seen (counting this one):

    1. BatchNorm layers normalise with ``lambda_t * stats(x) + (1 - lambda_t) * source`` (detached, unbiased current
       variance), ``lambda_t = 1 / (sqrt(t) / warm_n + 1)``: the ``"warmup"`` regime of
       :class:`~monai_tta.norms.NormPolicy`.
    2. The prompt is set to the memory bank's softmax-weighted sum of the prompts of the ``neighbors`` most similar
       low-frequency keys, or to ones while the bank holds fewer than ``neighbors`` entries.
    3. ``steps`` times (1 in VPTTA): forward the prompted image, loss :func:`~monai_tta.losses.bn_alignment_loss`
       over all adaptive BatchNorm layers, one optimizer step on the prompt only (Adam, its state persists over the
       stream although the prompt value is re-initialised per case, as in the reference).
    4. Prediction: the prompted image with the updated prompt through the network (same ``t``, the statistics of the
       new prompted image). Then the bank stores copies of (key of ``x``, updated prompt).

    Only the prompt changes: the network's parameters and buffers are never written. ``reset()`` restores the prompt
    to ones, empties the bank, rebuilds the optimizer and restarts the warm-up counter ``t`` at 0 (in the
    ``"episodic"`` setting ``t`` is therefore 1 for every case). For a batch of several images (one case) the memory
    key is the mean of their keys. The prompt lives on the device of the network's parameters.

    See :class:`~monai_tta.adapters.vptta.prompt.FourierPrompt` for the prompt's layout (``window``,
    ``roll_channels``): the default is the published method up to a fixed permutation of the prompt channels.

    Args:
        prompt_size: side of the prompt; default ``max(int(image_size * alpha), 1)``.
        image_size: image side used to derive the prompt side (512 fundus, 352 polyp).
        alpha: prompt-to-image ratio (0.01).
        in_channels: image channels; default: those of the network's first convolution.
        memory_size: bank capacity (40; the bank holds up to ``memory_size + 1`` entries, as the reference).
        neighbors: number of neighbours ``k`` (16).
        temperature: softmax temperature of the neighbour weights (0.2).
        window: prompt window position, ``"reference"`` or ``"centred"``.
        roll_channels: reproduce the reference's channel roll of the prompt and key.
        kwargs: :class:`~monai_tta.adapters.base.Adapter` arguments; defaults here: ``setting="continual"``,
            ``norm="warmup"`` (``warm_n=5``), Adam ``lr=0.05`` (fundus; 0.01 for polyp), ``betas=(0.9, 0.99)``.

    Volumes: the prompt is N-dimensional (a low-frequency window of the 3D spectrum, ``prompt_size`` per axis), so a
    volume adapted whole (padded to the network's size multiple) works as an image does. Adapting a volume on patches
    (:class:`~monai_tta.inferers.SlidingWindowAdapter`) is not supported: VPTTA's prompt and memory key are defined on
    the whole input's spectrum.

    Raises:
        ValueError: for invalid prompt or bank settings (see :class:`FourierPrompt`, :class:`PromptMemory`), for
            ``params`` (the method updates its prompt only), and on the first call for a network without BatchNorm
            running statistics (the alignment loss and the warm-up statistics need them).
    """

    default_norm = NormRegime.WARMUP
    requires_batch_norm = True
    supports_patches = False

    def __init__(
        self,
        prompt_size: int | None = None,
        image_size: int = 512,
        alpha: float = 0.01,
        in_channels: int | None = None,
        memory_size: int = 40,
        neighbors: int = 16,
        temperature: float = 0.2,
        window: str = "reference",
        roll_channels: bool = False,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("params") is not None:
            raise ValueError("VPTTA updates its prompt only (the network stays frozen); do not pass params.")
        kwargs.setdefault("setting", Setting.CONTINUAL)
        kwargs.setdefault("lr", 0.05)
        kwargs.setdefault("betas", (0.9, 0.99))
        super().__init__(**kwargs)
        self.prompt_kwargs = {
            "prompt_size": prompt_size,
            "image_size": image_size,
            "alpha": alpha,
            "window": window,
            "roll_channels": roll_channels,
        }
        self.in_channels = in_channels
        # validate the settings now rather than at the first case
        FourierPrompt(in_channels or 1, **self.prompt_kwargs)
        PromptMemory(memory_size, neighbors, temperature)
        self.memory_size, self.neighbors, self.temperature = memory_size, neighbors, temperature
        self._prompts: weakref.WeakKeyDictionary[nn.Module, FourierPrompt] = weakref.WeakKeyDictionary()

    # ----------------------------------------------------------------- hooks
    def select_params(self, network: nn.Module) -> list[nn.Parameter]:
        """The prompt's parameter (the adapter owns one prompt per network; the network stays frozen)."""
        prompt = self._prompts.get(network)
        if prompt is None:
            channels = self.in_channels if self.in_channels is not None else _first_conv_in_channels(network)
            prompt = FourierPrompt(channels, spatial_dims=_first_conv_spatial_dims(network), **self.prompt_kwargs)
            param = next(network.parameters(), None)
            if param is not None:
                prompt = prompt.to(param.device)
            self._prompts[network] = prompt
        return [prompt.prompt]

    def init_state(self, state: AdapterState, network: nn.Module) -> None:
        state.extra[_PROMPT] = self._prompts[network]
        state.extra[_MEMORY] = PromptMemory(self.memory_size, self.neighbors, self.temperature)
        state.extra[_NEEDS_INIT] = True

    def reset_state(self, state: AdapterState) -> None:
        state.extra[_PROMPT].reset()
        state.extra[_MEMORY].reset()
        state.extra[_NEEDS_INIT] = True
        state.seen = 0

    # ----------------------------------------------------------------- the method
    def prompt_for(self, network: nn.Module) -> FourierPrompt:
        """The prompt module of ``network`` (created on first use)."""
        return self.state_for(network).extra[_PROMPT]

    def memory_for(self, network: nn.Module) -> PromptMemory:
        """The memory bank of ``network`` (created on first use)."""
        return self.state_for(network).extra[_MEMORY]

    @staticmethod
    def _case_key(key: torch.Tensor) -> torch.Tensor:
        return key.mean(dim=0, keepdim=True) if key.shape[0] > 1 else key

    def _init_prompt(self, state: AdapterState, inputs: torch.Tensor) -> bool:
        """Initialise the prompt for a new case from the bank (or ones); returns whether the bank was used."""
        prompt: FourierPrompt = state.extra[_PROMPT]
        memory: PromptMemory = state.extra[_MEMORY]
        state.extra[_NEEDS_INIT] = False
        value = None
        if len(memory) >= memory.neighbors:
            value = memory.retrieve(self._case_key(prompt.low_frequency(inputs)))
        if value is None:
            prompt.reset()
            return False
        prompt.load_prompt(value)
        return True

    def adapt(
        self, state: AdapterState, inputs: torch.Tensor, network: nn.Module
    ) -> tuple[dict[str, Any], torch.Tensor | None]:
        stats: dict[str, Any] = {}
        if state.extra[_NEEDS_INIT]:
            stats[StatKeys.FROM_MEMORY] = self._init_prompt(state, inputs)
        prompt: FourierPrompt = state.extra[_PROMPT]
        with recording_stats(state.norms):
            network(prompt(inputs)[0])
            loss = bn_alignment_loss(state.norms)
        set_grads(state.params, param_grads(loss, state.params))
        state.optimizer.step()
        stats[StatKeys.LOSS] = float(loss.detach())
        stats[StatKeys.LR] = float(state.optimizer.param_groups[0]["lr"])
        if self.norm.regime == NormRegime.WARMUP:
            stats[StatKeys.WARMUP_LAMBDA] = warmup_lambda(state.seen, self.norm.warm_n)
        return stats, None

    def predict(self, state: AdapterState, inputs: torch.Tensor, network: nn.Module) -> torch.Tensor:
        if state.extra[_NEEDS_INIT]:  # steps == 0: no update, but the bank still initialises the prompt
            self._init_prompt(state, inputs)
        prompt: FourierPrompt = state.extra[_PROMPT]
        prompted, key = prompt(inputs)
        logits = network(prompted)
        memory: PromptMemory = state.extra[_MEMORY]
        memory.push(self._case_key(key), prompt.prompt)
        state.extra[_NEEDS_INIT] = True
        return logits

    def candidate_forward(self, state: AdapterState, inputs: torch.Tensor, network: nn.Module) -> torch.Tensor:
        """The prompted image with the current prompt through the network, without touching the memory bank."""
        prompted, _ = state.extra[_PROMPT](inputs)
        return network(prompted)

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        logits = super().__call__(inputs, network, *args, **kwargs)
        self.last_stats[StatKeys.MEMORY_SIZE] = len(self.state_for(network).extra[_MEMORY])
        return logits

    # ----------------------------------------------------------------- checkpoints
    def method_state_dict(self, state: AdapterState) -> dict[str, Any]:
        """Everything VPTTA keeps for a network: prompt, optimizer, bank, warm-up counter, step count.

        The network itself is not included (it is never changed by the adapter).
        """
        return {
            "prompt": state.extra[_PROMPT].prompt.detach().cpu().clone(),
            "optimizer": copy.deepcopy(state.optimizer.state_dict()) if state.optimizer is not None else None,
            "memory": state.extra[_MEMORY].state_dict(),
            "seen": int(state.seen),
            "step": int(state.step),
            "needs_init": bool(state.extra[_NEEDS_INIT]),
        }

    def load_method_state_dict(self, state: AdapterState, values: dict[str, Any]) -> None:
        """Restore what :meth:`method_state_dict` returned."""
        state.extra[_PROMPT].load_prompt(values["prompt"])
        if values.get("optimizer") is not None and state.optimizer is not None:
            state.optimizer.load_state_dict(values["optimizer"])
        state.extra[_MEMORY].load_state_dict(values["memory"])
        state.seen, state.step = int(values["seen"]), int(values["step"])
        state.extra[_NEEDS_INIT] = bool(values.get("needs_init", True))
