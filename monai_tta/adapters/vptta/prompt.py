"""VPTTA's low-frequency Fourier prompt (methods spec §3.2).

:class:`FourierPrompt` multiplies a small centred window of the Fourier amplitude spectrum of the input by a learnable
prompt (initialised to ones, so the initial transform is the identity) and returns the transformed image together with
the un-prompted window of the (shifted) amplitude, which VPTTA uses as the memory key of the image.

Its memory bank is :class:`~monai_tta.adapters.vptta.memory.PromptMemory`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.utils import look_up_option
from torch import nn

__all__ = ["FourierPrompt", "prompt_size_for", "WINDOW_MODES"]

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
