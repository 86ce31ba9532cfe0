"""ResUNet: a ResNet-34 encoder with a light UNet decoder, named so that GraTa/VPTTA checkpoints load as they are.

The module tree reproduces the state-dict names of the fundus segmentation network used by GraTa and VPTTA
(``res.*`` for the encoder, ``up1..up4`` decoder blocks, ``up5``, ``bnout`` and ``seg_head``), so the published
``last-Res_Unet.pth`` files load with ``strict=True``. The network returns raw logits; the methods apply a
per-channel sigmoid themselves.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "BasicBlock",
    "ResNetEncoder",
    "UnetBlock",
    "ResUNet",
    "AUX_HEAD_PREFIXES",
    "load_reference_state_dict",
]

logger = logging.getLogger(__name__)

#: Top-level module names of GraTa's optional self-supervised branches. They are absent from :class:`ResUNet`
#: and are dropped (with a warning) by :func:`load_reference_state_dict`.
AUX_HEAD_PREFIXES: tuple[str, ...] = ("recon", "denoise", "supres", "rotate_head")

_ENCODER_WIDTHS: tuple[int, ...] = (64, 128, 256, 512)
_STEM_WIDTH = 64
_IMAGENET_CLASSES = 1000


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN pairs with an identity (or 1x1 conv-BN) shortcut, as in torchvision's ResNet-18/34.

    Args:
        in_channels: channels of the block input.
        out_channels: channels of the block output.
        stride: stride of the first 3x3 convolution (and of the shortcut projection).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the residual block.

        Args:
            x: input of shape ``(B, in_channels, H, W)``.

        Returns:
            Tensor of shape ``(B, out_channels, H / stride, W / stride)``.
        """
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class ResNetEncoder(nn.Module):
    """ResNet encoder (BasicBlock variant) that returns the bottleneck and the four skip features.

    ``avgpool`` and ``fc`` are kept (unused) so that the state dict has the ``fc.*`` entries of an ImageNet ResNet.

    Args:
        in_channels: channels of the input image.
        layers: number of BasicBlocks in each of the four stages; ``(3, 4, 6, 3)`` is ResNet-34.
    """

    def __init__(self, in_channels: int = 3, layers: Sequence[int] = (3, 4, 6, 3)) -> None:
        super().__init__()
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"layers must be four positive block counts, got {tuple(layers)}.")
        self.conv1 = nn.Conv2d(in_channels, _STEM_WIDTH, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM_WIDTH)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        width_in = _STEM_WIDTH
        for i, (width, n_blocks) in enumerate(zip(_ENCODER_WIDTHS, layers)):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(width_in, width, stride)]
            blocks += [BasicBlock(width, width) for _ in range(int(n_blocks) - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            width_in = width
        self.avgpool = nn.AvgPool2d(7, stride=1)
        self.fc = nn.Linear(_ENCODER_WIDTHS[-1], _IMAGENET_CLASSES)
        self._init_weights()

    def _init_weights(self) -> None:
        # He-normal on fan-out for the convolutions, identity affine for BN (the torchvision/reference scheme).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encode an image.

        Args:
            x: input of shape ``(B, in_channels, H, W)``.

        Returns:
            ``(bottleneck, skips)``: the ``layer4`` output and the list
            ``[relu(bn1(conv1)) (/2), layer1 (/4), layer2 (/8), layer3 (/16), layer4 (/32)]``.
        """
        skips: list[torch.Tensor] = []
        x = self.relu(self.bn1(self.conv1(x)))
        skips.append(x)
        x = self.maxpool(x)
        # the four stages written out (no getattr): the forward stays TorchScript-compatible (torch.jit.script)
        x = self.layer1(x)
        skips.append(x)
        x = self.layer2(x)
        skips.append(x)
        x = self.layer3(x)
        skips.append(x)
        x = self.layer4(x)
        skips.append(x)
        return x, skips


class UnetBlock(nn.Module):
    """Decoder step: ``BN(ReLU(cat[tr_conv(up), x_conv(skip)]))`` (ReLU before BN, as in the reference).

    Args:
        up_in: channels of the coarser input, upsampled x2 by a transposed convolution.
        x_in: channels of the skip feature, projected by a 1x1 convolution.
        n_out: output channels; each branch contributes ``n_out // 2``.

    Raises:
        ValueError: if ``n_out`` is not even.
    """

    def __init__(self, up_in: int, x_in: int, n_out: int = 256) -> None:
        super().__init__()
        if n_out % 2:
            raise ValueError(f"n_out must be even, got {n_out}.")
        half = n_out // 2
        self.x_conv = nn.Conv2d(x_in, half, kernel_size=1)
        self.tr_conv = nn.ConvTranspose2d(up_in, half, kernel_size=2, stride=2)
        self.bn = nn.BatchNorm2d(n_out)

    def forward(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Upsample ``up``, merge it with ``skip`` and normalise.

        Args:
            up: coarse feature ``(B, up_in, h, w)``.
            skip: skip feature ``(B, x_in, 2h, 2w)``.

        Returns:
            Tensor of shape ``(B, n_out, 2h, 2w)``.
        """
        merged = torch.cat([self.tr_conv(up), self.x_conv(skip)], dim=1)
        return self.bn(F.relu(merged))


class ResUNet(nn.Module):
    """ResNet-34 UNet of GraTa/VPTTA (fundus optic disc/cup segmentation), returning raw logits.

    Architecture: encoder ``res`` (:class:`ResNetEncoder`); ``up1..up4`` (:class:`UnetBlock`, 256 channels) fed
    with ``layer3``, ``layer2``, ``layer1`` and the stem as skips; ``up5`` (transposed conv 256->32, x2), ``bnout``,
    ReLU and the 1x1 ``seg_head``. The ImageNet weights are never downloaded; load a checkpoint with
    :func:`load_reference_state_dict`.

    Args:
        in_channels: channels of the input image.
        out_channels: number of output logit channels (2 for optic disc and cup).
        layers: BasicBlocks per encoder stage; ``(3, 4, 6, 3)`` is ResNet-34, ``(2, 2, 2, 2)`` ResNet-18.

    Raises:
        ValueError: on invalid ``layers``.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 2, layers: Sequence[int] = (3, 4, 6, 3)) -> None:
        super().__init__()
        #: the input height and width must be multiples of this (an instance attribute, seen by torch.jit.script).
        self.size_divisor = 32
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.res = ResNetEncoder(in_channels=in_channels, layers=layers)
        self.up1 = UnetBlock(_ENCODER_WIDTHS[3], _ENCODER_WIDTHS[2], 256)
        self.up2 = UnetBlock(256, _ENCODER_WIDTHS[1], 256)
        self.up3 = UnetBlock(256, _ENCODER_WIDTHS[0], 256)
        self.up4 = UnetBlock(256, _STEM_WIDTH, 256)
        self.up5 = nn.ConvTranspose2d(256, 32, kernel_size=2, stride=2)
        self.bnout = nn.BatchNorm2d(32)
        self.seg_head = nn.Conv2d(32, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment a batch of images.

        Args:
            x: input of shape ``(B, in_channels, H, W)`` with ``H`` and ``W`` multiples of 32.

        Returns:
            Logits of shape ``(B, out_channels, H, W)`` (no sigmoid).

        Raises:
            ValueError: if the input is not 4D or its spatial size is not a multiple of 32.
        """
        # plain string concatenation keeps the forward TorchScript-compatible (torch.jit.script)
        if x.ndim != 4:
            raise ValueError("ResUNet expects a (B, C, H, W) input, got shape " + str(list(x.shape)) + ".")
        if x.shape[-2] % self.size_divisor or x.shape[-1] % self.size_divisor:
            raise ValueError(
                "ResUNet needs H and W divisible by "
                + str(self.size_divisor)
                + ", got "
                + str(list(x.shape[-2:]))
                + "; pad or resize the input (e.g. monai.transforms.DivisiblePad(k=32))."
            )
        bottleneck, skips = self.res(x)
        y = F.relu(bottleneck)
        y = self.up1(y, skips[3])
        y = self.up2(y, skips[2])
        y = self.up3(y, skips[1])
        y = self.up4(y, skips[0])
        y = F.relu(self.bnout(self.up5(y)))
        return self.seg_head(y)


def _is_aux_key(key: str) -> bool:
    return key.split(".", 1)[0].startswith(AUX_HEAD_PREFIXES)


def _extract_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(source, (str, os.PathLike)):
        source = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(source, Mapping):
        raise TypeError(f"Expected a state dict, a checkpoint dict or a path, got {type(source).__name__}.")
    for wrapper in ("model", "state_dict"):
        inner = source.get(wrapper)
        if isinstance(inner, Mapping):
            return inner
    return source


def load_reference_state_dict(
    model: nn.Module, path_or_state_dict: str | os.PathLike | Mapping[str, Any], strict: bool = True
) -> nn.Module:
    """Load a GraTa/VPTTA-style checkpoint into ``model``.

    The source may be a file written by ``torch.save``, a raw state dict, or a checkpoint dict holding the state dict
    under ``"model"`` or ``"state_dict"``. A ``module.`` prefix (``DataParallel``) is stripped. Entries of GraTa's
    self-supervised branches (``recon*``, ``denoise*``, ``supres*``, ``rotate_head*``) that ``model`` does not have
    are dropped with a warning listing them. The file is read with ``weights_only=True`` and on the CPU.

    Args:
        model: the network to fill (typically :class:`ResUNet`); modified in place.
        path_or_state_dict: checkpoint path or an already-loaded (checkpoint) dict.
        strict: if True, any missing key, unexpected key or shape mismatch raises; if False, matching entries are
            loaded, mismatched shapes are skipped and the rest is logged as a warning.

    Returns:
        ``model``, for chaining (e.g. in a bundle config).

    Raises:
        TypeError: if the source is not a mapping after loading.
        ValueError: if ``strict`` and the keys or shapes do not match ``model``.
    """
    raw = _extract_state_dict(path_or_state_dict)
    state: dict[str, Any] = {}
    for key, value in raw.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        if name in state:
            raise ValueError(f"Checkpoint key {key!r} collides with {name!r} after stripping the 'module.' prefix.")
        state[name] = value

    own = model.state_dict()
    dropped = sorted(k for k in state if k not in own and _is_aux_key(k))
    if dropped:
        logger.warning("Dropping %d auxiliary-head entries not used by the model: %s", len(dropped), dropped)
        for k in dropped:
            del state[k]

    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches {mismatched}")
    if problems and strict:
        raise ValueError(f"Checkpoint does not match {type(model).__name__}: " + "; ".join(problems) + ".")
    if problems:
        logger.warning("Loading %s non-strictly: %s.", type(model).__name__, "; ".join(problems))
        for entry in mismatched:
            del state[entry.split(":", 1)[0]]
    model.load_state_dict(state, strict=strict)
    return model
