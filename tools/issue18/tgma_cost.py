"""Issue 18: CPU cost of TGMA's served guard per volume: ``GuardedEnsemble`` (the choice between the adapted ensemble
and TGMA before adaptation) against the adapted ensemble alone, both in the bundle's ``SliceWiseNetwork``.

Usage: ``python tools/issue18/tgma_cost.py [REPS] [SLICES]``. The TGMA bundle's network (two SmallUNet members,
widths 8-64, 3 softmax outputs) with random weights and running statistics, on a random ``64 x 64 x SLICES`` volume:
the cost does not depend on the weights. One thread; the two arms alternate, the order flips every round, the first
round is dropped; median per volume.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from monai_tta.networks import SmallUNet
from monai_tta.tgma import GuardedEnsemble, SliceWiseNetwork, WeightedEnsemble


def _ensemble() -> WeightedEnsemble:
    members = [SmallUNet(in_channels=1, out_channels=3, features=(8, 16, 32, 64)) for _ in range(2)]
    for m in members:  # random running statistics, so that every mix differs
        for layer in m.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.running_mean.uniform_(-0.2, 0.2)
                layer.running_var.uniform_(0.5, 1.5)
    return WeightedEnsemble(members, [0.6, 0.4], "softmax")


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 9
    slices = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    target, source = _ensemble(), _ensemble()
    arms = {
        "adapted alone": SliceWiseNetwork(target).eval(),
        "guarded": SliceWiseNetwork(GuardedEnsemble(target, source)).eval(),
    }
    x = torch.randn(1, 1, 64, 64, slices)
    times: dict[str, list[float]] = {name: [] for name in arms}
    with torch.no_grad():
        for r in range(reps + 1):
            for name in list(arms) if r % 2 == 0 else list(reversed(arms)):
                start = time.perf_counter()
                arms[name](x)
                if r > 0:
                    times[name].append(time.perf_counter() - start)
    alone, guarded = (statistics.median(times[name]) * 1000 for name in arms)
    print(
        f"volume 64 x 64 x {slices}, {reps} rounds: adapted alone {alone:.1f} ms, guarded {guarded:.1f} ms "
        f"({guarded / alone:.2f}x)"
    )


if __name__ == "__main__":
    main()
