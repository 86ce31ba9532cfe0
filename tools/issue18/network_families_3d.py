"""Issue 18: do the 3D bundles' default adapters update MONAI's networks of every normalisation family, and what do the
guards choose, on the embedded MR sites?

Usage: ``python tools/issue18/network_families_3d.py DATASET_DIR OUT_CSV [--iterations N] [--sites S ...]
[--cases K] [--families F ...]``. DATASET_DIR is a folder written by ``monai_tta.data.generate_mr_sites`` (its
``source_train`` section trains each network). Each family is built with MONAI's defaults (3D, 1 channel in, 2 out;
DynUNet, which has no default layout, with the usual 4-level one), trained ``N`` Adam iterations on random 64x64x32
source patches (two per batch, Dice + BCE: a short training, so that the predictions carry a signal; not a converged
model), then every method of the 3D bundles runs through ``SlidingWindowAdapter`` at the bundle's defaults
(``episodic``, the bundle's guards: the non-finite rollback, the collapse safeguard, ``safe`` per case) with a 64x64x32
window (the size every family accepts). One row per network x method x volume: Dice of the source model and of the
reported prediction, the candidate chosen, whether the update was taken (``step``), accepted by the step rule
(``safe_step``) or refused (``safe_source``), and the seconds per volume.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import torch
from monai.bundle import ConfigParser
from monai.losses import DiceCELoss
from monai.networks.nets import UNETR, BasicUNet, DynUNet, SegResNet, SwinUNETR, UNet

from monai_tta.adapters import GraTa, SourceOnly, Tent
from monai_tta.guards import CollapseSafeguard, NonFiniteRollback, SafeChoice
from monai_tta.inferers import SlidingWindowAdapter
from monai_tta.metrics import dice_per_channel
from monai_tta.reports import write_case_csv

ROI = (64, 64, 32)
FAMILIES = {
    "UNet (BatchNorm)": lambda: UNet(
        3, 1, 2, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2, norm="batch"
    ),
    "BasicUNet (InstanceNorm)": lambda: BasicUNet(spatial_dims=3, in_channels=1, out_channels=2),
    "SegResNet (GroupNorm)": lambda: SegResNet(spatial_dims=3, in_channels=1, out_channels=2),
    "DynUNet (InstanceNorm)": lambda: DynUNet(
        3, 1, 2, kernel_size=[3, 3, 3, 3], strides=[1, 2, 2, 2], upsample_kernel_size=[2, 2, 2]
    ),
    "UNETR (LayerNorm, InstanceNorm)": lambda: UNETR(in_channels=1, out_channels=2, img_size=ROI),
    "SwinUNETR (LayerNorm, InstanceNorm)": lambda: SwinUNETR(in_channels=1, out_channels=2),
}
METHODS = {"tent": Tent, "grata": GraTa}


def dice(pred: torch.Tensor, label: torch.Tensor) -> float:
    """Mean Dice (%) over the channels (:func:`monai_tta.metrics.dice_per_channel`)."""
    values = dice_per_channel(pred, label)
    return sum(values) / len(values)


def pad(x: torch.Tensor) -> torch.Tensor:
    """Pad the spatial axes up to the window."""
    extra = [max(r - s, 0) for s, r in zip(x.shape[-3:], ROI)]
    return torch.nn.functional.pad(x, [v for e in reversed(extra) for v in (0, e)])


def train(net: torch.nn.Module, volumes: list[tuple[torch.Tensor, torch.Tensor]], iterations: int) -> float:
    """Adam on random windows of the source volumes; the last loss."""
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(sigmoid=True)
    net.train()
    loss = torch.tensor(float("nan"))
    for _ in range(iterations):
        xs, ys = [], []
        for _ in range(2):
            x, y = volumes[int(torch.randint(len(volumes), (1,), generator=gen))]
            x, y = pad(x), pad(y)
            start = [int(torch.randint(s - r + 1, (1,), generator=gen)) for s, r in zip(x.shape[-3:], ROI)]
            index = (slice(None), *(slice(s, s + r) for s, r in zip(start, ROI)))
            xs.append(x[index])
            ys.append(y[index])
        opt.zero_grad()
        loss = loss_fn(net(torch.stack(xs)), torch.stack(ys).float())
        loss.backward()
        opt.step()
    net.eval()
    return float(loss)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset_dir")
    ap.add_argument("out_csv")
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--sites", nargs="+", default=["bias", "pelvis", "small"])
    ap.add_argument("--cases", type=int, default=2)
    ap.add_argument("--families", nargs="+", default=None, help="substrings of the family names")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    parser = ConfigParser()
    parser.read_config("bundles/grata_prostate_mr_segmentation/configs/inference.json")
    parser["bundle_root"] = parser["dataset_dir"] = args.dataset_dir
    pre = parser.get_parsed_content("labelled_preprocessing")
    datalist = json.load(open(os.path.join(args.dataset_dir, "datalist.json")))

    def load(item: dict) -> tuple[torch.Tensor, torch.Tensor]:
        data = pre({k: os.path.join(args.dataset_dir, item[k]) for k in ("image", "label")})
        return data["image"].as_tensor(), data["label"].as_tensor() > 0.5

    source = [load(item) for item in datalist["source_train"]]
    tests = [(s, item, *load(item)) for s in args.sites for item in datalist[f"{s}_test"][: args.cases]]
    rows = []
    for family, make in FAMILIES.items():
        if args.families and not any(f.lower() in family.lower() for f in args.families):
            continue
        torch.manual_seed(0)
        net = make()
        t0 = time.time()
        last = train(net, source, args.iterations)
        print(
            f"{family}: trained {args.iterations} iterations in {time.time() - t0:.0f} s, loss {last:.3f}", flush=True
        )
        window = dict(roi_size=ROI, sw_batch_size=4, overlap=0.25, mode="gaussian")
        plain = SlidingWindowAdapter(SourceOnly(), **window)
        for name, method in METHODS.items():
            guards = [NonFiniteRollback(), CollapseSafeguard(), SafeChoice(per="case")]
            adapter = SlidingWindowAdapter(method(setting="episodic", lr=1e-4, seed=0, guards=guards), **window)
            for site, item, x, y in tests:
                src = plain(x[None], net)[0]
                t = time.time()
                out = adapter(x[None], net)[0]
                seconds = time.time() - t
                stats = adapter.last_stats
                rows.append(
                    {
                        "network": family,
                        "method": name,
                        "site": site,
                        "case": item["case_id"],
                        "dice_source": round(dice(src > 0, y), 2),
                        "dice": round(dice(out > 0, y), 2),
                        "step": stats.get("step"),
                        "safe_choice": stats.get("safe_choice"),
                        "safe_step": stats.get("safe_step"),
                        "safe_source": stats.get("safe_source"),
                        "seconds": round(seconds, 2),
                    }
                )
                print(rows[-1], flush=True)
    write_case_csv(args.out_csv, rows)


if __name__ == "__main__":
    main()
