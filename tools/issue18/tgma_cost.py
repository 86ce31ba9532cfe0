"""Issue 18: CPU cost of TGMA's served model per volume: ``GuardedEnsemble`` with ``serve="guarded"`` (the choice
between the adapted ensemble and TGMA before adaptation) and at its default (``"before"``: the untouched ensemble)
against the adapted ensemble alone, all in the bundle's ``SliceWiseNetwork``.

Usage: ``python tools/issue18/tgma_cost.py [REPS] [SLICES]``. The TGMA bundle's network (two SmallUNet members,
widths 8-64, 3 softmax outputs) with random weights and running statistics, on a random ``64 x 64 x SLICES`` volume:
the cost does not depend on the weights. One thread; the three arms alternate, the order flips every round, the
first round is dropped; median per volume; each line a served arm against the adapted ensemble alone.
"""

from __future__ import annotations

import os
import sys

import torch

from monai_tta.networks import SmallUNet
from monai_tta.tgma import GuardedEnsemble, SliceWiseNetwork, WeightedEnsemble

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import interleaved_medians, ratio_line  # noqa: E402  (a sibling tool)


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
        "guarded": SliceWiseNetwork(GuardedEnsemble(target, source, serve="guarded")).eval(),
        "served default (before)": SliceWiseNetwork(GuardedEnsemble(target, source)).eval(),
    }
    x = torch.randn(1, 1, 64, 64, slices)
    with torch.no_grad():
        medians = interleaved_medians({name: lambda net=net: net(x) for name, net in arms.items()}, reps)
    first = next(iter(medians))
    for name in list(medians)[1:]:
        print(ratio_line(f"volume 64 x 64 x {slices}", reps, {first: medians[first], name: medians[name]}))


if __name__ == "__main__":
    main()
