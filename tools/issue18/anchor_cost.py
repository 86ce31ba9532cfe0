"""Issue 18: per-image CPU cost of DyNA's source anchor on a day image (the day adapter with ``safe`` alone, against
the day adapter followed by :class:`~monai_tta.guards.SourceAnchor`; interleaved calls, median of reps).

Usage: ``python tools/issue18/anchor_cost.py CHECKPOINT DATASET_DIR [REPS]``: CHECKPOINT the 2D source model (the
benchmark's ``source_small_128_n32_e30_s0.pt``), DATASET_DIR a folder written by
``monai_tta.data.generate_fundus_domains`` (its first ``mild`` image, preprocessed by the DyNA bundle's
``labelled_preprocessing``). The day adapter is the DyNA bundle's ``inferer`` (VPTTA, continual, ``safe="case"``);
the anchor holds the same source model (as after a night the day model differs from it, the anchor's forwards do
not depend on that). One thread; the two arms alternate, the order flips every round, the first round is dropped.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from monai_tta.guards import SourceAnchor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dyna_table import dyna_bundle  # noqa: E402  (a sibling tool)
from timing import interleaved_medians, ratio_line  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    checkpoint, root = sys.argv[1:3]
    reps = int(sys.argv[3]) if len(sys.argv) > 3 else 15
    parser, pre, net = dyna_bundle(root, checkpoint)
    anchor = SourceAnchor(net, parser.get_parsed_content("inferer").safe)
    adapter = parser.get_parsed_content("inferer")
    item = json.load(open(os.path.join(root, "datalist.json")))["mild"][0]
    x = pre({k: os.path.join(root, item[k]) for k in ("image", "label")})["image"].as_tensor().float()[None]

    def with_anchor() -> None:
        anchor.choose(x, adapter(x, net), dict(adapter.last_stats))

    medians = interleaved_medians({"safe": lambda: adapter(x, net), "safe + anchor": with_anchor}, reps)
    print(ratio_line(f"image {tuple(x.shape)}", reps, medians))


if __name__ == "__main__":
    main()
