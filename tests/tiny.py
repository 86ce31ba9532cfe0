"""Tiny networks and data shared by the tests."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

__all__ = [
    "TinyNet",
    "tiny_net",
    "scramble_batch_norms",
    "tiny_image",
    "noise_images",
    "tiny_bundle_overrides",
    "MR_SITES",
    "tiny_mr_overrides",
    "draw_square",
    "tiny_tgma_overrides",
    "write_nifti_sites",
    "digest",
]


class TinyNet(nn.Module):
    """conv 3x3 -> BN -> ReLU -> conv 1x1 (2 logits): small enough to write its forward out by hand."""

    def __init__(self, in_channels: int = 2, hidden: int = 3, out_channels: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.bn = nn.BatchNorm2d(hidden)
        self.head = nn.Conv2d(hidden, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))))


def tiny_net(seed: int = 0, in_channels: int = 2) -> TinyNet:
    """A TinyNet with random weights, non-trivial BN affine values and source running statistics, in eval mode."""
    torch.manual_seed(seed)
    return scramble_batch_norms(TinyNet(in_channels=in_channels))


def scramble_batch_norms(net: nn.Module) -> nn.Module:
    """Give every BatchNorm layer of ``net`` non-trivial affine values and running statistics (from torch's global
    generator); returns ``net`` in eval mode."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def tiny_image(seed: int = 1, size: int = 8, channels: int = 2) -> torch.Tensor:
    """A (1, C, size, size) image in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, channels, size, size, generator=g)


def tiny_bundle_overrides(tmp: Path, domains: tuple[str, ...] = ("camera", "dim"), per_domain: int = 3) -> dict:
    """Bundle overrides for a tiny run: ``per_domain`` cases of each domain at 32x32, 1 source epoch, no progress bar,
    all outputs under ``tmp``."""
    return {
        "dataset_dir": str(tmp / "data"),
        "output_dir": str(tmp / "eval"),
        "source_checkpoint": str(tmp / "models" / "model.pt"),
        "num_per_domain": per_domain,
        "image_size": 32,
        "target_domains": list(domains),
        "source_training#epochs": 1,
        "train_if_missing": True,
        "handlers#0#_disabled_": True,
    }


#: the target sites of the tiny 3D runs.
MR_SITES = ["thick_test", "sagittal_test"]


def tiny_mr_overrides(tmp: Path) -> dict:
    """A tiny run: the generated sites at half resolution (volumes of ~30x30x12 voxels), 2 test volumes per target
    site, a 4-level UNet of 4..32 features, 16x16x8 windows, 1 source epoch, all outputs under ``tmp``."""
    return {
        "dataset_dir": str(tmp / "data"),
        "output_dir": str(tmp / "eval"),
        "source_checkpoint": str(tmp / "models" / "model.pt"),
        "num_train": 3,
        "num_test": 2,
        "voxel_scale": 2.0,
        "pixdim": [4.0, 4.0, 6.0],
        "roi_size": [16, 16, 8],
        "target_domains": MR_SITES,
        "network_def#channels": [4, 8, 16, 32],
        "network_def#num_res_units": 1,
        "source_training#epochs": 1,
        "train_if_missing": True,
        "handlers#0#_disabled_": True,
    }


def tiny_tgma_overrides(root: Path, sites: list[str]) -> dict:
    """TGMA bundle overrides for a tiny run: ``sites`` generated with 3 training and 1 test volume each at 16x16 in
    plane, 1 source epoch, 2 adaptation epochs, every output under ``root``."""
    return {
        "dataset_dir": str(root / "data"),
        "models_dir": str(root / "models"),
        "output_dir": str(root / "eval"),
        "data_sites": list(sites),
        "num_train": 3,
        "num_test": 1,
        "voxel_scale": 2.0,
        "pixdim": [4.0, 4.0, 6.0],
        "slice_size": [16, 16],
        "source_training#epochs": 1,
        "tgma#epochs": 2,
    }


def write_nifti_sites(
    root: Path,
    draw: Callable[[np.random.Generator, float], tuple[np.ndarray, np.ndarray]],
    gains: Mapping[str, float],
    affine: np.ndarray | None = None,
    per_site: int = 4,
) -> Path:
    """A user's own data set: ``per_site`` NIfTI image/label pairs per site, ``draw(rng, gain) -> (image, label)``,
    and a MONAI datalist ``my_datalist.json`` with a section per site plus ``source_train`` (all but the last case of
    the first site) and ``source_val`` (its last case). Returns the datalist's path."""
    rng = np.random.default_rng(0)
    affine = np.eye(4) if affine is None else affine
    sections = {}
    for site, gain in gains.items():
        items = []
        for i in range(per_site):
            image, label = draw(rng, gain)
            for name, arr in (("img", image), ("lab", label)):
                nib.save(nib.Nifti1Image(arr, affine), root / f"{site}_{i}_{name}.nii.gz")
            items.append({"image": f"{site}_{i}_img.nii.gz", "label": f"{site}_{i}_lab.nii.gz"})
        sections[site] = items
    first = next(iter(sections.values()))
    path = root / "my_datalist.json"
    path.write_text(json.dumps({"source_train": first[:-1], "source_val": first[-1:], **sections}))
    return path


def draw_square(rng: np.random.Generator, gain: float) -> tuple[np.ndarray, np.ndarray]:
    """A 1-channel 32x32 image with a bright 10x10 square, and its binary label."""
    img = rng.normal(0.2, 0.05, (32, 32)).astype(np.float32)
    lab = np.zeros((32, 32), np.uint8)
    r, c = rng.integers(6, 18, size=2)
    lab[r : r + 10, c : c + 10] = 1
    return gain * (img + 0.6 * lab), lab


def noise_images(n: int, seed: int = 3, size: int = 16) -> list[torch.Tensor]:
    """``n`` (1, 3, size, size) images of zero-centred noise with a random offset per channel: diverse
    low-frequency keys, so a VPTTA memory bank's weights matter."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(1, 3, size, size, generator=g) * (0.5 + i / n) + torch.randn(1, 3, 1, 1, generator=g)
        for i in range(n)
    ]


def digest(path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
