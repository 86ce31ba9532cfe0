"""SmallUNet: a compact BatchNorm UNet for CPU experiments and tests of the BN-based adaptation methods."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ConvBNReLU2x", "SmallUNet"]

_UPSAMPLE_MODES = ("deconv", "bilinear")


def _layers(spatial_dims: int) -> tuple[type[nn.Module], type[nn.Module], type[nn.Module], type[nn.Module]]:
    if spatial_dims == 2:
        return nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.ConvTranspose2d
    if spatial_dims == 3:
        return nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.ConvTranspose3d
    raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")


class ConvBNReLU2x(nn.Sequential):
    """Two ``conv3x3 -> BatchNorm -> ReLU`` units (convolutions without bias, as BN follows).

    Args:
        in_channels: input channels.
        out_channels: output channels of both convolutions.
        spatial_dims: 2 or 3.
    """

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 2) -> None:
        conv, norm, _, _ = _layers(spatial_dims)
        super().__init__(
            conv(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            norm(out_channels),
            nn.ReLU(),
            conv(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            norm(out_channels),
            nn.ReLU(),
        )


class _UpStep(nn.Module):
    """Upsample x2, concatenate the skip, then :class:`ConvBNReLU2x`."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, spatial_dims: int, mode: str) -> None:
        super().__init__()
        conv, _, _, deconv = _layers(spatial_dims)
        self.mode = mode
        if mode == "deconv":
            self.up = deconv(in_channels, out_channels, kernel_size=2, stride=2)
        else:
            self.up = conv(in_channels, out_channels, kernel_size=1)
        self.conv = ConvBNReLU2x(out_channels + skip_channels, out_channels, spatial_dims)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.mode == "deconv":
            x = self.up(x)
        else:
            interp = "bilinear" if x.ndim == 4 else "trilinear"
            x = self.up(F.interpolate(x, size=skip.shape[2:], mode=interp, align_corners=False))
        return self.conv(torch.cat([x, skip], dim=1))


class SmallUNet(nn.Module):
    """A small UNet with BatchNorm after every 3x3 convolution and no dropout; returns raw logits.

    Each level is ``(conv-BN-ReLU) x 2``; the encoder downsamples with max-pooling, the decoder upsamples x2
    (transposed convolution, or (bi/tri)linear interpolation followed by a 1x1 convolution), concatenates the skip
    feature and applies ``(conv-BN-ReLU) x 2``; a 1x1 convolution gives the logits at the input resolution.
    With the default widths it has 8 + 6 = 14 BatchNorm layers and about 0.48 M parameters. ReLUs are not
    in-place, so hooks that keep a BatchNorm output see it unchanged.

    CPU cost (2 cores, eval, one 3x256x256 image): about 95-100 ms with the default widths, about 37 ms with
    ``features=(8, 16, 32, 64)``; about 27 ms with the default widths on 3x128x128.

    Args:
        in_channels: channels of the input image.
        out_channels: number of output logit channels.
        features: widths of the levels, finest first; the last one is the bottleneck. At least two levels.
        spatial_dims: 2 (``BatchNorm2d``) or 3 (``BatchNorm3d``).
        upsample: ``"deconv"`` (transposed convolution) or ``"bilinear"`` (linear interpolation, trilinear in 3D,
            then a 1x1 convolution).

    Raises:
        ValueError: on an unsupported ``spatial_dims`` or ``upsample``, or fewer than two ``features``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 2,
        features: Sequence[int] = (16, 32, 64, 128),
        spatial_dims: int = 2,
        upsample: str = "deconv",
    ) -> None:
        super().__init__()
        conv, _, pool, _ = _layers(spatial_dims)
        if upsample not in _UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {_UPSAMPLE_MODES}, got {upsample!r}.")
        features = tuple(int(f) for f in features)
        if len(features) < 2 or any(f < 1 for f in features):
            raise ValueError(f"features needs at least two positive widths, got {features}.")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.spatial_dims = spatial_dims
        self.size_divisor = 2 ** (len(features) - 1)

        self.encoder = nn.ModuleList()
        width_in = in_channels
        for width in features:
            self.encoder.append(ConvBNReLU2x(width_in, width, spatial_dims))
            width_in = width
        self.pool = pool(kernel_size=2, stride=2)
        self.decoder = nn.ModuleList(
            _UpStep(coarse, fine, fine, spatial_dims, upsample)
            for coarse, fine in zip(features[:0:-1], features[-2::-1])
        )
        self.head = conv(features[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment a batch.

        Args:
            x: input ``(B, in_channels, *spatial)``, each spatial size a multiple of ``2 ** (len(features) - 1)``.

        Returns:
            Logits ``(B, out_channels, *spatial)``.

        Raises:
            ValueError: if the input rank or spatial size does not fit the network.
        """
        # plain string concatenation and loops keep the forward TorchScript-compatible (torch.jit.script)
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                "SmallUNet(" + str(self.spatial_dims) + "D) expects a " + str(self.spatial_dims + 2) + "D input, "
                "got " + str(x.ndim) + "D."
            )
        for size in x.shape[2:]:
            if size % self.size_divisor:
                raise ValueError(
                    "SmallUNet needs spatial sizes divisible by "
                    + str(self.size_divisor)
                    + ", got "
                    + str(list(x.shape[2:]))
                    + "."
                )
        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.encoder):
            if i:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for step in self.decoder:
            x = step(x, skips.pop())
        return self.head(x)
