"""GraTa's strong style augmentation, written in torch with an explicit random generator.

The sampling rules follow the batchgenerators transforms that the GraTa reference composes (methods spec §2.3):
multiplicative brightness, contrast with the half-below/half-above factor sampling, inverted gamma, Gaussian noise
whose sampled value is the standard deviation, per-channel Gaussian blur, then a per-sample min-max to ``[0, 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

__all__ = ["StrongStyle", "StrongStyled", "minmax_per_sample", "gaussian_blur_channel"]


def minmax_per_sample(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Min-max each sample of ``(B, ...)`` to ``[0, 1]`` over all its channels and positions (out of place)."""
    flat = x.reshape(x.shape[0], -1)
    lo = flat.min(dim=1).values.view(-1, *([1] * (x.dim() - 1)))
    hi = flat.max(dim=1).values.view(-1, *([1] * (x.dim() - 1)))
    return (x - lo) / (hi - lo).clamp_min(1e-12 if eps == 0.0 else eps)


def gaussian_blur_channel(img: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Isotropic Gaussian blur of one 2D/3D channel with edge-inclusive symmetric padding (scipy's ``reflect``).

    Args:
        img: ``(H, W)`` or ``(D, H, W)`` tensor.
        sigma: standard deviation in pixels.
        truncate: kernel radius in sigmas, as scipy's ``gaussian_filter``.
    """
    radius = int(truncate * sigma + 0.5)
    if radius == 0:
        return img
    grid = torch.arange(-radius, radius + 1, dtype=img.dtype, device=img.device)
    kernel = torch.exp(-0.5 * (grid / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = img.unsqueeze(0).unsqueeze(0)
    for axis in range(img.dim()):
        dim = axis + 2
        n = out.shape[dim]
        idx = torch.arange(-radius, n + radius, device=img.device)
        idx = idx.abs() - (idx < 0).long()  # -1 -> 0, -2 -> 1: edge included
        idx = torch.where(idx >= n, 2 * n - 1 - idx, idx)
        padded = out.index_select(dim, idx.clamp(0, n - 1))
        shape = [1, 1] + [1] * img.dim()
        shape[dim] = -1
        weights = kernel.view(shape)
        conv = {2: F.conv2d, 3: F.conv3d}.get(img.dim())
        if conv is None:
            raise ValueError(f"gaussian_blur_channel supports 2D and 3D channels, got {img.dim()}D.")
        out = conv(padded, weights)
    return out[0, 0]


def _uniform(low: float, high: float, generator: torch.Generator | None, size: int = 1) -> torch.Tensor:
    return low + (high - low) * torch.rand(size, generator=generator, dtype=torch.float64)


def _normal_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, drawn where ``x`` lives.

    On the CPU it comes from ``generator`` itself. On an accelerator, drawing a whole image on the CPU and copying it
    over would cost about as much as a network forward (a 3x512x512 draw took 6.5 ms on our 2-core CPU; a ResUNet-34
    forward at that size takes 7.6 ms on an H100), so one seed is drawn from ``generator`` and the noise comes from a
    generator of ``x``'s device seeded with it: the result is reproducible for a seeded ``generator`` (but not the same
    numbers as on the CPU).
    """
    if x.device.type == "cpu":
        return torch.randn(x.shape, generator=generator, dtype=x.dtype)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    device_generator = torch.Generator(device=x.device).manual_seed(seed)
    return torch.randn(x.shape, generator=device_generator, dtype=x.dtype, device=x.device)


def _split_factor(low: float, high: float, generator: torch.Generator | None, size: int) -> torch.Tensor:
    """batchgenerators' rule for ranges around 1: half the draws from ``U(low, 1)``, half from ``U(1, high)``."""
    below = torch.rand(size, generator=generator, dtype=torch.float64) < 0.5
    lower = _uniform(low, 1.0, generator, size)
    upper = _uniform(1.0, high, generator, size)
    return torch.where(below, lower, upper)


class StrongStyle(Transform):
    """GraTa's strong style augmentation for a batch ``(B, C, *spatial)`` of images in ``[0, 1]``.

    Each sample draws its own factors. The input is not modified; the output is min-maxed per sample to ``[0, 1]``.

    Args:
        brightness: multiplicative brightness range (per channel).
        contrast: contrast factor range (per channel, half the draws below 1).
        gamma: gamma range (per channel, half the draws below 1), applied to the inverted image.
        noise_std: range of the noise standard deviation (one value per sample).
        blur_sigma: range of the blur sigma (one per channel).
        prob_brightness: probability per sample of the brightness step; likewise the others.
        prob_contrast: see ``prob_brightness``.
        prob_gamma: see ``prob_brightness``.
        prob_noise: see ``prob_brightness``.
        prob_blur: probability per sample of the blur step.
        prob_blur_channel: probability per channel of blurring, once the blur step is on.
        generator: default random generator (a call may pass its own).
    """

    def __init__(
        self,
        brightness: Sequence[float] = (0.5, 1.5),
        contrast: Sequence[float] = (0.5, 1.5),
        gamma: Sequence[float] = (0.5, 2.0),
        noise_std: Sequence[float] = (0.0, 0.05),
        blur_sigma: Sequence[float] = (0.5, 1.5),
        prob_brightness: float = 0.75,
        prob_contrast: float = 0.75,
        prob_gamma: float = 0.75,
        prob_noise: float = 0.5,
        prob_blur: float = 0.5,
        prob_blur_channel: float = 0.5,
        generator: torch.Generator | None = None,
    ) -> None:
        for name, p in (
            ("prob_brightness", prob_brightness),
            ("prob_contrast", prob_contrast),
            ("prob_gamma", prob_gamma),
            ("prob_noise", prob_noise),
            ("prob_blur", prob_blur),
            ("prob_blur_channel", prob_blur_channel),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}.")
        self.brightness, self.contrast, self.gamma = tuple(brightness), tuple(contrast), tuple(gamma)
        self.noise_std, self.blur_sigma = tuple(noise_std), tuple(blur_sigma)
        self.prob_brightness, self.prob_contrast, self.prob_gamma = prob_brightness, prob_contrast, prob_gamma
        self.prob_noise, self.prob_blur, self.prob_blur_channel = prob_noise, prob_blur, prob_blur_channel
        self.generator = generator

    def _coin(self, p: float, g: torch.Generator | None) -> bool:
        return bool(torch.rand(1, generator=g).item() < p)

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a batch.

        Args:
            img: ``(B, C, *spatial)`` images in ``[0, 1]``.
            generator: random generator for this call (default: the constructor's).

        Raises:
            ValueError: if ``img`` has fewer than 3 dimensions.
        """
        if img.dim() < 3:
            raise ValueError(f"StrongStyle expects (B, C, *spatial), got shape {tuple(img.shape)}.")
        g = self.generator if generator is None else generator
        samples = [self.augment_one(x, g) for x in img.detach()]
        return minmax_per_sample(torch.stack(samples))

    def augment_one(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        """The steps (brightness, contrast, gamma, noise, blur) on one image, before the batch's per-sample min-max
        of :meth:`__call__`: each step's own range rules can be seen here (contrast keeps each channel inside its
        range, gamma keeps each channel's range); the input is not modified.

        Args:
            x: one image ``(C, *spatial)``.
            g: random generator of the draws (``None``: torch's global one).
        """
        c = x.shape[0]
        shape = (c,) + (1,) * (x.dim() - 1)
        axes = tuple(range(1, x.dim()))
        x = x.clone()
        if self._coin(self.prob_brightness, g):
            x = x * _uniform(*self.brightness, g, c).to(x).view(shape)
        if self._coin(self.prob_contrast, g):
            factor = _split_factor(*self.contrast, g, c).to(x).view(shape)
            mean = x.mean(dim=axes, keepdim=True)
            lo, hi = x.amin(dim=axes, keepdim=True), x.amax(dim=axes, keepdim=True)
            x = torch.minimum(torch.maximum((x - mean) * factor + mean, lo), hi)
        if self._coin(self.prob_gamma, g):
            gamma = _split_factor(*self.gamma, g, c).to(x).view(shape)
            y = -x
            lo = y.amin(dim=axes, keepdim=True)
            rng = y.amax(dim=axes, keepdim=True) - lo
            y = ((y - lo) / (rng + 1e-7)).pow(gamma) * (rng + 1e-7) + lo
            x = -y
        if self._coin(self.prob_noise, g):
            std = float(_uniform(*self.noise_std, g).item())
            x = x + std * _normal_like(x, g)
        if self._coin(self.prob_blur, g):
            channels = []
            for ch in x:
                sigma = float(_uniform(*self.blur_sigma, g).item())
                blur = self._coin(self.prob_blur_channel, g)
                channels.append(gaussian_blur_channel(ch, sigma) if blur and math.isfinite(sigma) else ch)
            x = torch.stack(channels)
        return x


class StrongStyled(MapTransform):
    """Dictionary form of :class:`StrongStyle`; it adds a batch axis around each single image ``(C, *spatial)``.

    Args:
        keys: keys of the images to augment.
        allow_missing_keys: do not raise for a missing key.
        kwargs: arguments of :class:`StrongStyle`.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = StrongStyle(**kwargs)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(torch.as_tensor(d[key])[None])[0]
        return d
