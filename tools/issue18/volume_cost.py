"""Per-volume CPU cost of TENT or GraTa through SlidingWindowAdapter, safe off vs on (interleaved, median of reps).

Usage: ``python tools/issue18/volume_cost.py CHECKPOINT CACHE [REPS] [METHOD]`` (METHOD ``tent``, the default, or
``grata``): CHECKPOINT is the 3D source model the benchmark trains into its cache
(``source_mr_train16_e80_s0_<digest>.pt``), CACHE the benchmark's cache folder holding the generated content sites
(``python -m monai_tta.bench --dims 3 --vol-sites pelvis --vol-cases 3 --cache CACHE``).
"""

import glob
import statistics
import sys
import time

import nibabel as nib
import torch
from monai.networks.nets import UNet

from monai_tta.adapters import GraTa, Tent
from monai_tta.inferers import SlidingWindowAdapter

torch.set_num_threads(1)
net = UNet(3, 1, 2, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2, norm="batch").eval()
sd = torch.load(sys.argv[1], weights_only=True)
net.load_state_dict(sd.get("network", sd) if isinstance(sd, dict) and "network" in sd else sd)
f = sorted(glob.glob(f"{sys.argv[2]}/mr_sites_s0_train16_test3/pelvis/imagesTs/*"))[0]
x = torch.as_tensor(nib.load(f).get_fdata(), dtype=torch.float32)[None, None]
x = (x - x.mean()) / x.std()
print("volume", tuple(x.shape), f)
kw = dict(roi_size=(48, 48, 16), sw_batch_size=4, overlap=0.25, mode="gaussian")
method = {"tent": Tent, "grata": GraTa}[sys.argv[4] if len(sys.argv) > 4 else "tent"]
runs = {
    "off": SlidingWindowAdapter(method(setting="episodic", seed=0), safe=False, **kw),
    "on": SlidingWindowAdapter(method(setting="episodic", seed=0), safe=True, **kw),
}
t = {k: [] for k in runs}
for rep in range(int(sys.argv[3]) if len(sys.argv) > 3 else 7):
    for k in list(runs) if rep % 2 == 0 else list(runs)[::-1]:
        s = time.perf_counter()
        runs[k](x, net)
        t[k].append(time.perf_counter() - s)
m = {k: statistics.median(v[1:]) for k, v in t.items()}
print(
    {k: round(v * 1000) for k, v in m.items()},
    "ratio on/off",
    round(m["on"] / m["off"], 2),
    runs["on"].last_stats.get("safe_choice"),
)
