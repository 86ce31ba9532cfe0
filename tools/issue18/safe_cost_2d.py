"""Issue 18: per-image CPU cost of each 2D bundle method with ``safe`` off and on (interleaved calls, median of reps).

Usage: ``python tools/issue18/safe_cost_2d.py CHECKPOINT DATASET_DIR [REPS]``: CHECKPOINT is the 2D source model the
benchmark trains into its cache (``source_small_128_n32_e30_s0.pt``), DATASET_DIR a folder written by
``monai_tta.data.generate_fundus_domains`` (its first ``camera`` image is used, preprocessed by the bundle
``grata_fundus_segmentation``'s ``labelled_preprocessing``). Every method is built as in its bundle (``episodic``,
the bundle's learning rate), ``safe=False`` against ``safe="case"``; the two arms alternate, the order flips every
round, the first round is dropped.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch
from monai.bundle import ConfigParser

from monai_tta.adapters import SAR, VPTTA, GraTa, Tent

torch.set_num_threads(1)
checkpoint, root = sys.argv[1:3]
reps = int(sys.argv[3]) if len(sys.argv) > 3 else 11
parser = ConfigParser()
parser.read_config("bundles/grata_fundus_segmentation/configs/inference.json")
parser["bundle_root"] = parser["dataset_dir"] = root
pre = parser.get_parsed_content("labelled_preprocessing")
net = parser.get_parsed_content("network_def").eval()
sd = torch.load(checkpoint, weights_only=True)
net.load_state_dict(sd.get("model", sd.get("network", sd)))
item = json.load(open(os.path.join(root, "datalist.json")))["camera"][0]
x = pre({k: os.path.join(root, item[k]) for k in ("image", "label")})["image"].as_tensor()[None]
methods = {"tent": Tent, "grata": GraTa, "sar": SAR, "vptta": VPTTA}
print("image", tuple(x.shape))
for name, method in methods.items():
    arms = {safe: method(setting="episodic", seed=0, safe=safe) for safe in (False, "case")}
    times: dict = {safe: [] for safe in arms}
    for rep in range(reps):
        for safe in list(arms) if rep % 2 == 0 else list(arms)[::-1]:
            start = time.process_time()
            arms[safe](x, net)
            times[safe].append(time.process_time() - start)
    off, on = (statistics.median(v[1:]) * 1000 for v in times.values())
    print(f"{name}: safe off {off:.1f} ms, on {on:.1f} ms, ratio {on / off:.2f}")
