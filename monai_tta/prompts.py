"""VPTTA's low-frequency Fourier prompt and its memory bank (methods spec §3.2 and §3.4).

:class:`FourierPrompt` multiplies a small centred window of the Fourier amplitude spectrum of the input by a learnable
prompt (initialised to ones, so the initial transform is the identity) and returns the transformed image together with
the un-prompted window of the (shifted) amplitude, which VPTTA uses as the memory key of the image.

:class:`PromptMemory` is the key-value bank that initialises the prompt of a new image from the prompts learned on
the images whose low-frequency amplitudes were most similar (cosine similarity, top-k, softmax with a temperature).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.utils import look_up_option
from torch import nn

__all__ = ["FourierPrompt", "PromptMemory", "prompt_size_for", "WINDOW_MODES"]

#: where the prompt window sits in the shifted spectrum: ``"reference"`` (VPTTA's) or ``"centred"``.
WINDOW_MODES = ("reference", "centred")


def prompt_size_for(image_size: int, alpha: float = 0.01) -> int:
    """VPTTA's prompt side ``max(int(image_size * alpha), 1)`` (5 for 512 and 0.01, 3 for 352 and 0.01).

    Args:
        image_size: side of the (square) input images.
        alpha: ratio of the prompt side to the image side.

    Raises:
        ValueError: if ``image_size < 1`` or ``alpha <= 0``.
    """
    if image_size < 1 or alpha <= 0:
        raise ValueError(f"image_size must be >= 1 and alpha > 0, got image_size={image_size}, alpha={alpha}.")
    return max(int(image_size * alpha), 1)


class FourierPrompt(nn.Module):
    """A learnable multiplicative prompt on the low-frequency Fourier amplitude of an image.

    Forward, for an input ``x`` of shape ``(B, C, *spatial)``:

    1. ``S = fftn(x)`` over the spatial axes (the full complex transform, not ``rfftn``), ``A = |S|``.
    2. The mask ``M`` is one everywhere except a window of side ``s`` in the *shifted* spectrum (zero frequency in the
       middle), which holds the prompt ``P`` of shape ``(1, C, s, ..., s)``.
    3. ``x' = Re(ifftn(S * ifftshift(M)))``. Multiplying the complex spectrum by the real mask scales the amplitude and
       keeps the phase: this is VPTTA's ``|S| M cos(phase) + i |S| M sin(phase)`` written without the polar form
       (the same value and gradient up to rounding).
    4. The key is the window of ``fftshift(A)`` (the un-prompted amplitude) at the prompt's position, ``(B, C, s, s)``.

    Differences from the reference code, and the flags that control them:

    - The reference calls ``fftshift``/``ifftshift`` without ``dim``, so they also roll the batch and channel axes: for
      ``C = 3`` prompt channel ``c`` acts on image channel ``(c - 1) mod 3`` and the key channels are rolled the same
      way. Our default (``roll_channels=False``) shifts the spatial axes only, so prompt channel ``c`` acts on image
      channel ``c``. With a bank, a cosine kNN and an elementwise optimizer this is the published method up to a fixed
      permutation of the prompt (and key) channels: ``P_ours = roll(P_ref, -(C // 2), dim=1)``, and the predictions
      are identical. ``roll_channels=True`` reproduces the reference's channel roll (not its batch roll, which only
      mispairs keys and images for batches of more than one image).
    - ``window="reference"`` (default) puts the window at ``(n - s) // 2`` along each axis, as the reference does. For
      an even side ``n`` and odd ``s`` this is one bin off centre (the zero frequency sits at ``n // 2`` after the
      shift): with ``n = 512, s = 5`` it covers frequency offsets -3..+1. ``window="centred"`` puts it at
      ``n // 2 - s // 2`` (offsets -2..+2), which keeps the window symmetric about the zero frequency. Both coincide
      for odd ``n``. The output is the real part of the inverse transform in both cases, as in the reference.
    - The reference assumes square images of a fixed size; here the window position is computed from each input's
      own spatial size, and 3D inputs are supported (``spatial_dims=3``).

    Args:
        in_channels: channels of the input image (``C``).
        prompt_size: side ``s`` of the prompt; when ``None`` it is :func:`prompt_size_for` ``(image_size, alpha)``.
        image_size: image side used to derive ``prompt_size`` (512 for fundus, 352 for polyp).
        alpha: prompt-to-image ratio used to derive ``prompt_size`` (0.01 in VPTTA).
        spatial_dims: 2 or 3.
        window: ``"reference"`` or ``"centred"`` (see above).
        roll_channels: reproduce the reference's channel roll (see above).

    Raises:
        ValueError: for an invalid size, ``spatial_dims`` or ``window``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        prompt_size: int | None = None,
        image_size: int = 512,
        alpha: float = 0.01,
        spatial_dims: int = 2,
        window: str = "reference",
        roll_channels: bool = False,
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}.")
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        size = prompt_size_for(image_size, alpha) if prompt_size is None else int(prompt_size)
        if size < 1:
            raise ValueError(f"prompt_size must be >= 1, got {size}.")
        self.in_channels = in_channels
        self.prompt_size = size
        self.spatial_dims = spatial_dims
        self.window = look_up_option(window, WINDOW_MODES)
        self.roll_channels = bool(roll_channels)
        self.prompt = nn.Parameter(torch.ones((1, in_channels) + (size,) * spatial_dims))

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, prompt_size={self.prompt_size}, window={self.window!r}, "
            f"roll_channels={self.roll_channels}"
        )

    @torch.no_grad()
    def reset(self) -> None:
        """Set the prompt back to ones (the identity transform)."""
        self.prompt.fill_(1.0)

    @torch.no_grad()
    def load_prompt(self, value: torch.Tensor) -> None:
        """Copy ``value`` (any device, the prompt's shape or a flat tensor of its size) into the prompt in place."""
        self.prompt.copy_(torch.as_tensor(value).reshape(self.prompt.shape))

    def window_starts(self, spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """Start index of the prompt window along each spatial axis of the shifted spectrum.

        Raises:
            ValueError: if an axis is shorter than the prompt.
        """
        s = self.prompt_size
        if any(n < s for n in spatial_shape):
            raise ValueError(f"spatial shape {tuple(spatial_shape)} is smaller than the prompt size {s}.")
        if self.window == "reference":
            return tuple((n - s) // 2 for n in spatial_shape)
        return tuple(n // 2 - s // 2 for n in spatial_shape)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input (B, {self.in_channels}, {self.spatial_dims} spatial axes), got {tuple(x.shape)}."
            )

    def _shift_dims(self, x: torch.Tensor) -> tuple[int, ...]:
        spatial = tuple(range(2, x.dim()))
        return (1, *spatial) if self.roll_channels else spatial

    def _window(self, shifted: torch.Tensor) -> torch.Tensor:
        starts = self.window_starts(shifted.shape[2:])
        index = (slice(None), slice(None)) + tuple(slice(a, a + self.prompt_size) for a in starts)
        return shifted[index]

    def mask(self, spatial_shape: Sequence[int]) -> torch.Tensor:
        """The full multiplicative mask ``(1, C, *spatial)`` in the shifted layout (ones outside the window)."""
        starts = self.window_starts(spatial_shape)
        pad: list[int] = []
        for n, a in reversed(list(zip(spatial_shape, starts))):
            pad.extend([a, n - a - self.prompt_size])
        return F.pad(self.prompt, pad, mode="constant", value=1.0)

    @torch.no_grad()
    def low_frequency(self, x: torch.Tensor) -> torch.Tensor:
        """The memory key of ``x``: the un-prompted low-frequency amplitude window ``(B, C, s, ..., s)``."""
        self._check(x)
        dims = tuple(range(2, x.dim()))
        amplitude = torch.fft.fftn(x, dim=dims).abs()
        return self._window(torch.fft.fftshift(amplitude, dim=self._shift_dims(x)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the prompt.

        Args:
            x: ``(B, C, *spatial)`` real images.

        Returns:
            the prompted images (same shape and real dtype as ``x``, differentiable w.r.t. the prompt) and the
            memory key ``(B, C, s, ..., s)`` (detached).

        Raises:
            ValueError: if the input does not match the channels or spatial rank, or is smaller than the prompt.
        """
        self._check(x)
        dims = tuple(range(2, x.dim()))
        shift = self._shift_dims(x)
        spectrum = torch.fft.fftn(x, dim=dims)
        key = self._window(torch.fft.fftshift(spectrum.abs(), dim=shift)).detach()
        mask = torch.fft.ifftshift(self.mask(x.shape[2:]), dim=shift)
        out = torch.fft.ifftn(spectrum * mask.to(x.dtype), dim=dims).real
        return out, key


class PromptMemory:
    """VPTTA's memory bank: low-frequency amplitude keys mapped to the prompts learned on those images.

    The bank lives on the device of the keys it is given (the GPU in a GPU run): keys and values are rows of two
    preallocated tensors of ``size + 1`` slots, and retrieval (cosine similarity, top-``k``, softmax weights, the
    weighted prompt) runs there. The only host read per case is the one the published algorithm needs: on
    :meth:`push`, whether the new key equals a stored one (the reference keys a Python dict by the key's bytes, so an
    identical key overwrites the earlier value and keeps its place in the FIFO order). The slot bookkeeping (FIFO
    order, count) is host-side Python, so :meth:`retrieve` and ``len`` never synchronise.

    - :meth:`push` stores a *copy* of the key and of the value (the reference stores a view of the live prompt when it
      runs on a CPU, so its stored prompts silently follow later updates; the published numbers come from GPU runs
      where ``.cpu()`` copies, which is what we do everywhere). Before inserting, if the bank holds more than
      ``size`` entries the oldest one is dropped, so the bank holds up to ``size + 1`` entries, as the reference.
    - :meth:`retrieve` returns ``None`` while the bank holds fewer than ``neighbors`` entries; otherwise the
      ``neighbors`` stored keys with the highest cosine similarity to the query (computed in float64, as the
      reference's NumPy code), and the weighted sum of their values with weights ``softmax(cos / temperature)``.

    Args:
        size: capacity (40 in VPTTA; the bank may hold ``size + 1``).
        neighbors: number of neighbours ``k`` (16 in VPTTA).
        temperature: softmax temperature (0.2 in VPTTA).

    Raises:
        ValueError: if ``size`` or ``neighbors`` is below 1 or ``temperature <= 0``.
    """

    def __init__(self, size: int = 40, neighbors: int = 16, temperature: float = 0.2) -> None:
        if size < 1 or neighbors < 1:
            raise ValueError(f"size and neighbors must be >= 1, got size={size}, neighbors={neighbors}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.size, self.neighbors, self.temperature = int(size), int(neighbors), float(temperature)
        self.reset()

    def __len__(self) -> int:
        return len(self._order)

    def reset(self) -> None:
        """Empty the bank (the slot tensors are allocated again by the next :meth:`push`)."""
        self._keys: torch.Tensor | None = None  # (size + 1, d) float32
        self._values: torch.Tensor | None = None  # (size + 1, *value shape)
        self._valid: torch.Tensor | None = None  # (size + 1,) bool, on the bank's device
        self._order: list[int] = []  # occupied slots, oldest first

    @property
    def device(self) -> torch.device | None:
        """The device the bank lives on (``None`` while it is empty and unallocated)."""
        return None if self._keys is None else self._keys.device

    def _allocate(self, key: torch.Tensor, value: torch.Tensor) -> None:
        slots = self.size + 1
        self._keys = torch.zeros(slots, key.numel(), dtype=torch.float32, device=key.device)
        self._values = torch.zeros(slots, *value.shape, dtype=value.dtype, device=key.device)
        self._valid = torch.zeros(slots, dtype=torch.bool, device=key.device)

    def _move_to(self, device: torch.device) -> None:
        if self._keys is not None and self._keys.device != device:
            self._keys, self._values, self._valid = (t.to(device) for t in (self._keys, self._values, self._valid))

    @property
    def keys(self) -> torch.Tensor:
        """The stored keys ``(n, d)``, oldest first (float32, on the bank's device)."""
        if self._keys is None or not self._order:
            return torch.zeros(0, 0)
        return self._keys[self._order].clone()

    @property
    def values(self) -> list[torch.Tensor]:
        """The stored values, oldest first (copies, on the bank's device)."""
        if self._values is None:
            return []
        return [self._values[i].clone() for i in self._order]

    def push(self, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store a copy of ``value`` under a copy of ``key`` (see the class docstring for eviction and overwrites).

        Raises:
            ValueError: if the key's or the value's size differs from the stored ones.
        """
        k = key.detach().reshape(-1).to(torch.float32)
        v = value.detach()
        if self._keys is None:
            self._allocate(k, v)
        self._move_to(k.device)
        if k.numel() != self._keys.shape[1] or tuple(v.shape) != tuple(self._values.shape[1:]):
            raise ValueError(
                f"key of size {k.numel()} / value of shape {tuple(v.shape)} do not match the bank's "
                f"{self._keys.shape[1]} / {tuple(self._values.shape[1:])}."
            )
        free = None
        if len(self._order) > self.size:
            free = self._order.pop(0)
            self._valid[free] = False
        same = (self._keys == k).all(dim=1) & self._valid
        hit = int(torch.where(same.any(), same.to(torch.int8).argmax(), -1))  # the one host read of a case
        if hit >= 0:
            self._values[hit].copy_(v)
            return
        slot = free if free is not None else next(i for i in range(self.size + 1) if i not in self._order)
        self._keys[slot].copy_(k)
        self._values[slot].copy_(v)
        self._valid[slot] = True
        self._order.append(slot)

    def _similarity(self, key: torch.Tensor) -> torch.Tensor:
        """Cosine similarity (float64) of ``key`` to every slot; ``-inf`` for the empty slots."""
        self._move_to(key.device)
        query = key.detach().reshape(-1).to(self._keys.device, torch.float32).double()
        if self._keys.shape[1] != query.numel():
            raise ValueError(
                f"key of size {query.numel()} does not match the stored keys of size {self._keys.shape[1]}."
            )
        stored = self._keys.double()
        cosine = stored @ query / (stored.norm(dim=1) * query.norm()).clamp_min(1e-12)
        return cosine.masked_fill(~self._valid, float("-inf"))

    def neighbours(self, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices (into :attr:`keys`, oldest first) of the ``neighbors`` most similar keys, and their softmax weights.

        Raises:
            ValueError: if the bank holds fewer than ``neighbors`` entries.
        """
        if len(self) < self.neighbors:
            raise ValueError(f"the bank holds {len(self)} entries, fewer than neighbors={self.neighbors}.")
        cosine = self._similarity(key)
        top = torch.topk(cosine, self.neighbors)
        position = {slot: i for i, slot in enumerate(self._order)}
        index = torch.tensor([position[int(s)] for s in top.indices.cpu()])
        return index, torch.softmax(top.values / self.temperature, dim=0)

    def retrieve(self, key: torch.Tensor) -> torch.Tensor | None:
        """The softmax-weighted sum of the values of the nearest keys, or ``None`` while ``len < neighbors``.

        Runs on the bank's device without a host synchronisation.
        """
        if len(self) < self.neighbors:
            return None
        top = torch.topk(self._similarity(key), self.neighbors)
        weights = torch.softmax(top.values / self.temperature, dim=0)
        chosen = self._values[top.indices].double()
        out = (weights.view(-1, *([1] * (chosen.dim() - 1))) * chosen).sum(dim=0)
        return out.to(self._values.dtype)

    def state_dict(self) -> dict[str, Any]:
        """The bank's content (keys oldest first, values, settings), on the CPU, for checkpoints."""
        return {
            "size": self.size,
            "neighbors": self.neighbors,
            "temperature": self.temperature,
            "keys": [k.cpu() for k in self.keys] if self._order else [],
            "values": [v.cpu() for v in self.values],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the content written by :meth:`state_dict` (the settings are taken from ``state``).

        The bank is restored on the CPU and moves to the device of the first key it is given afterwards.
        """
        self.size, self.neighbors = int(state["size"]), int(state["neighbors"])
        self.temperature = float(state["temperature"])
        self.reset()
        for k, v in zip(state["keys"], state["values"]):
            self.push(torch.as_tensor(k), torch.as_tensor(v))
