"""Issue 18: per case, the Dice of each label-free candidate and the value of each signal, 2D images or 3D volumes.

Usage::

    python tools/issue18/candidates.py --dims 3 CHECKPOINT DATASET_DIR OUT_CSV [--sections pelvis_test ...]
    python tools/issue18/candidates.py --dims 2 CHECKPOINT DATASET_DIR OUT_CSV [--sections camera ...]

CHECKPOINT is the source model the benchmark trains into its cache (3D: ``source_mr_train16_e80_s0_<digest>.pt``, 2D:
``source_small_128_n32_e30_s0.pt``); DATASET_DIR a folder written by ``monai_tta.data.generate_mr_sites`` (3D) or
``generate_fundus_domains`` (2D) holding ``datalist.json``; OUT_CSV the table written (one row per case x candidate).
Cases are read and preprocessed by the bundle's ``labelled_preprocessing`` (``grata_prostate_mr_segmentation`` in 3D,
``grata_fundus_segmentation`` in 2D) and scored in its grid (Dice over the channels, sigmoid > 0.5).

Candidates: ``stats_<p>`` the source weights with statistics ``p * source + (1 - p) * case`` (``stats_1`` is the source
model), and ``tent`` (one episodic TENT step, no guard). In 3D every candidate predicts through
``SlidingWindowAdapter`` at the bundle's window. Signals (the whole prediction): mean entropy, flip agreement,
consensus agreement (with the mean of all candidates), agreement with the source model, foreground fraction;
``mixes``, the stability across statistics mixes (a ``stats_<p>`` candidate's mean agreement with its neighbours on
the path of mixes, ``p - 0.25`` and ``p + 0.25``; ``tent``, whose regime is the case's statistics: with
``stats_0.25``); ``mixes_fg``, as ``mixes`` with the soft Dice of the foreground probabilities as the agreement;
``mixes_hard``, with the Dice of the masks ``p > 0.5``;
with ``--dropout K``, ``dropout``: the agreement of K forwards with feature dropout (rate
``--dropout-rate``, after every normalisation layer, fixed seeds) with their mean (1 minus the disagreement, after
AETTA's dropout disagreement). Agreement as in :func:`monai_tta.guards.signals.agreement`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import contextmanager

import torch
from monai.bundle import ConfigParser

from monai_tta.adapters import NormAdapt, Tent
from monai_tta.guards.signals import agreement, mix_neighbours, probabilities
from monai_tta.guards.source import mean_entropy
from monai_tta.inferers import SlidingWindowAdapter
from monai_tta.metrics import dice_per_channel
from monai_tta.norms import norm_layers
from monai_tta.reports import write_case_csv

PRIORS = (1.0, 0.75, 0.5, 0.25, 0.0)


@contextmanager
def feature_dropout(net: torch.nn.Module, rate: float, seed: int):
    """Dropout at ``rate`` on the output of every (adaptive) normalisation layer of ``net``, seeded."""
    gen = torch.Generator().manual_seed(seed)

    def hook(_module, _inputs, out):
        keep = (torch.rand(out.shape, generator=gen) >= rate).to(out.dtype)
        return out * keep / (1.0 - rate)

    handles = [layer.register_forward_hook(hook) for layer in norm_layers(net)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def neighbours(name: str) -> list[str]:
    """The candidates next to ``name`` on the path of statistics mixes (as ``safe`` takes them,
    :func:`monai_tta.guards.signals.mix_neighbours`); TENT's regime is the case's statistics (weight 0)."""
    prior = 0.0 if name == "tent" else float(name.split("_")[1])
    return [f"stats_{q:g}" for q in mix_neighbours(prior)]


def soft_overlap(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Soft Dice of two foreground probability maps, ``2 sum(p q) / (sum(p) + sum(q))`` pooled over every channel and
    voxel (1 when both are empty): an agreement measured on the foreground, whatever its share of the image. Not
    TGMA's :func:`~monai_tta.tgma.soft_dice_from_terms`, which averages per-channel Dice with smoothing: pooled, a
    channel with little foreground weighs as little as its voxels."""
    total = p.sum() + q.sum()
    return 2 * (p * q).sum() / total if total > 0 else torch.ones(())


def dice(pred: torch.Tensor, label: torch.Tensor) -> float:
    """Mean Dice (%) over the channels (:func:`monai_tta.metrics.dice_per_channel`)."""
    values = dice_per_channel(pred, label)
    return sum(values) / len(values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, choices=(2, 3), required=True)
    ap.add_argument("checkpoint")
    ap.add_argument("dataset_dir")
    ap.add_argument("out_csv")
    ap.add_argument("--sections", nargs="+", default=None, help="datalist sections (default: every target's)")
    ap.add_argument("--dropout", type=int, default=0, help="forwards with feature dropout per candidate (0: none)")
    ap.add_argument("--dropout-rate", type=float, default=0.1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    bundle = "grata_prostate_mr_segmentation" if args.dims == 3 else "grata_fundus_segmentation"
    parser = ConfigParser()
    parser.read_config(f"bundles/{bundle}/configs/inference.json")
    parser["bundle_root"] = parser["dataset_dir"] = args.dataset_dir
    pre = parser.get_parsed_content("labelled_preprocessing")
    net = parser.get_parsed_content("network_def").eval()
    sd = torch.load(args.checkpoint, weights_only=True)
    net.load_state_dict(sd.get("model", sd.get("network", sd)))
    adapters = {f"stats_{p:g}": NormAdapt(norm={"regime": "mix", "prior": p}) for p in PRIORS}
    adapters["tent"] = Tent(setting="episodic", safeguard=False, lr=1e-4)
    if args.dims == 3:
        window = dict(roi_size=tuple(parser["roi_size"]), sw_batch_size=parser["sw_batch_size"], overlap=0.25)
        runs = {k: SlidingWindowAdapter(a, safe=False, mode="gaussian", **window) for k, a in adapters.items()}
    else:
        runs = adapters
    datalist = json.load(open(os.path.join(args.dataset_dir, "datalist.json")))
    if args.sections:
        sections = args.sections
    elif args.dims == 3:
        sections = [k for k in datalist if k.endswith("_test") and not k.startswith("source")]
    else:
        sections = [d for d in datalist if isinstance(datalist[d], list) and d != "domains"]
    rows, t0 = [], time.time()
    for section in sections:
        for item in datalist[section]:
            files = {k: os.path.join(args.dataset_dir, item[k]) for k in ("image", "label")}
            data = pre(files)
            x, y = data["image"].as_tensor()[None], data["label"].as_tensor() > 0.5
            logits, flipped, dropped = {}, {}, {}
            for name, run in runs.items():
                logits[name] = run(x, net)[0].detach()
                flipped[name] = torch.flip(run(torch.flip(x, dims=(-1,)), net)[0], dims=(-1,)).detach()
                samples = []
                for k in range(args.dropout):
                    with feature_dropout(net, args.dropout_rate, seed=k):
                        samples.append(probabilities(run(x, net)[0].detach()[None], "sigmoid")[0])
                dropped[name] = samples
            probs = {k: probabilities(v[None], "sigmoid")[0] for k, v in logits.items()}
            mean = torch.stack(list(probs.values())).mean(0)
            for name in runs:
                p = probs[name]
                flip = agreement(p, probabilities(flipped[name][None], "sigmoid")[0], "sigmoid")
                near = [float(agreement(p, probs[n], "sigmoid")) for n in neighbours(name)]
                overlap = [float(soft_overlap(p, probs[n])) for n in neighbours(name)]
                hard = [float(soft_overlap((p > 0.5).float(), (probs[n] > 0.5).float())) for n in neighbours(name)]
                if dropped[name]:
                    centre = torch.stack(dropped[name]).mean(0)
                    drop = sum(float(agreement(q, centre, "sigmoid")) for q in dropped[name]) / len(dropped[name])
                else:
                    drop = float("nan")
                rows.append(
                    {
                        "site": item["domain"],
                        "case": item["case_id"],
                        "candidate": name,
                        "dice": round(dice(p > 0.5, y), 3),
                        "entropy": round(float(mean_entropy(logits[name][None])), 6),
                        "flip": round(float(flip), 6),
                        "consensus": round(float(agreement(p, mean, "sigmoid")), 6),
                        "source": round(float(agreement(p, probs["stats_1"], "sigmoid")), 6),
                        "area": round(float((p > 0.5).float().mean()), 6),
                        "mixes": round(sum(near) / len(near), 6),
                        "mixes_fg": round(sum(overlap) / len(overlap), 6),
                        "mixes_hard": round(sum(hard) / len(hard), 6),
                        "dropout": round(drop, 6),
                    }
                )
            print(item["case_id"], f"{time.time() - t0:.0f}s", {r["candidate"]: r["dice"] for r in rows[-len(runs) :]})
    write_case_csv(args.out_csv, rows)


if __name__ == "__main__":
    main()
