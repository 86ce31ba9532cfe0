"""The DyNA run of the tests: tiny random cases, a cached short source training and the runner's options (used by
``test_dyna.py`` and its kill script)."""

from __future__ import annotations

from functools import lru_cache

import torch
from tiny import TinyNet

from monai_tta.adapters import VPTTA
from monai_tta.adapters.dyna import DayNightRunner
from monai_tta.losses import dice_bce_loss

__all__ = ["N_STREAM", "PER_DAY", "cases", "source_state", "source_net", "stream", "heldout", "make_runner"]

N_STREAM, PER_DAY = 10, 4  # days of 4, 4 and 2 images


def cases(n: int, seed: int = 0, shift: float = 0.0) -> list[dict]:
    """Random 3x16x16 images with two simple binary label channels; ``shift`` mixes in a channel-reversed copy."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        img = torch.rand(3, 16, 16, generator=g)
        label = torch.stack([img.mean(0) > 0.5, img[1] > 0.7]).float()
        out.append({"image": ((1 - shift) * img + shift * img.flip(0)).clamp(0, 1), "label": label})
    return out


@lru_cache(maxsize=1)
def source_state() -> dict:
    torch.manual_seed(0)
    net = TinyNet(in_channels=3)
    data = cases(16, seed=5)
    x, y = torch.stack([d["image"] for d in data]), torch.stack([d["label"] for d in data])
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    net.train()
    for _ in range(60):
        opt.zero_grad()
        dice_bce_loss(net(x), y).backward()
        opt.step()
    return {k: v.clone() for k, v in net.state_dict().items()}


def source_net() -> TinyNet:
    """A freshly built TinyNet carrying the (cached) weights of a short source training, in eval mode."""
    net = TinyNet(in_channels=3)
    net.load_state_dict(source_state())
    return net.eval()


def stream() -> list[dict]:
    return cases(N_STREAM, seed=1, shift=0.3)


def heldout() -> list[dict]:
    return cases(3, seed=2, shift=0.3)


def make_runner(out_dir, callback=None, network=None) -> DayNightRunner:
    """The run used by the tests (the "same command" when resuming)."""
    return DayNightRunner(
        network if network is not None else source_net(),
        out_dir,
        day_adapter=VPTTA(prompt_size=3, memory_size=4, neighbors=2),
        images_per_day=PER_DAY,
        night_epochs=2,
        night_batch_size=2,
        night_lr=1e-2,
        checkpoint_interval=1,
        seed=7,
        callback=callback,
    )
