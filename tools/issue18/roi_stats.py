"""Issue 18 (exploration): per-volume BatchNorm statistics estimated only over a region of interest, 3D MR sites.

Usage::

    python tools/issue18/roi_stats.py CHECKPOINT DATASET_DIR OUT_CSV [--sections pelvis_test ...] [--margin 0.5]
        [--windows 8] [--time 0]
    python tools/issue18/roi_stats.py --table OUT_CSV

CHECKPOINT is the 3D source model of the benchmark's cache (``source_mr_train16_e80_s0_<digest>.pt``), DATASET_DIR a
folder written by ``monai_tta.data.generate_mr_sites`` (its ``datalist.json``), OUT_CSV the table written (one row per
volume x candidate); ``--table`` prints the per-site table of an OUT_CSV again. Volumes are read, preprocessed and
scored as in ``tools/issue18/candidates.py`` (the bundle ``grata_prostate_mr_segmentation``, Dice over the channels,
sigmoid > 0.5); the network is loaded the same way.

Hypothesis: on content shifts (wider field of view, cropped volume, small or large gland) per-volume statistics hurt
because the volume's *composition* differs from that of the source statistics, which the source training estimated
on ``RandCropByPosNegLabeld`` patches of ``roi_size`` (``pos=1, neg=1``: half centred on foreground, half on
background of a 120 mm field of view). ROI statistics imitate that: the source model predicts the volume first
(``stats_1``); its foreground (any channel > 0.5) gives ``--windows`` window centres of ``roi_size``, half on predicted
foreground voxels and half on predicted background voxels inside the foreground's bounding box grown by ``--margin``
windows on every side (seeded draws, windows shifted inside the volume as MONAI's crop does); BatchNorm statistics are
those of one training-mode forward of the batch of these windows (exact for every layer, as in training). A volume
with no predicted foreground keeps the source statistics for every ROI candidate (``roi_empty`` = 1).

Candidates (the source weights, MONAI's sliding window at the bundle's window and overlap, Gaussian blending):
``stats_<p>`` statistics ``p * source + (1 - p) * volume`` with the volume's pooled as ``SlidingWindowAdapter`` pools
them (its 4 grid patches), exactly as in ``candidates.py``; ``roi_<p>`` the same with the ROI statistics
(``roi_1`` would be ``stats_1``). Signals as ``candidates.py`` computes them on the whole prediction: ``entropy``
(mean binary entropy) and ``mixes`` (mean agreement with the neighbours on the candidate's own path of mixes,
``p -+ 0.25``; ``roi_0.75``'s upper neighbour is ``stats_1``). Per volume also: ``shift_first`` and ``shift_all``, the
KL divergence of the ROI statistics from the source running statistics (first BatchNorm layer, mean over layers);
``source_windows`` and ``stats_windows``, the windows forwarded by the source prediction and by the ROI statistics
(a ``roi_<p>`` prediction forwards ``source_windows`` again). ``--time K`` also times, K interleaved rounds on the
first volume, the source model's prediction against the rule's candidate ``roi_0.75`` (source prediction, ROI
statistics forward, ROI prediction), and prints the ratio.

The printed table: mean Dice per site and overall for ``stats_1`` (source), ``stats_0``, ``roi_0``, ``roi_0.5`` and
the rule of :func:`rule`, stated in ``docs/benchmarks/roi_stats_issue18.md`` before the confirmation draws (``*``:
more than 0.5 Dice below ``stats_1``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections import defaultdict

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer
from scipy import ndimage

from monai_tta.adapters import NormAdapt
from monai_tta.guards.signals import agreement, mix_neighbours, probabilities
from monai_tta.guards.source import mean_entropy
from monai_tta.inferers import SlidingWindowAdapter
from monai_tta.norms import case_statistics, convert_norms, pooled_statistics, statistics_prior
from monai_tta.padding import pad_to_size
from monai_tta.reports import write_case_csv

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from candidates import PRIORS, dice  # noqa: E402  (a sibling tool)
from timing import interleaved_medians, ratio_line  # noqa: E402  (a sibling tool)

__all__ = ["foreground", "roi_windows", "roi_statistics", "stats_shift", "predict_with", "rule", "site_table", "main"]

#: the candidates of the printed table, in order.
TABLE = ("stats_1", "stats_0", "roi_0", "roi_0.5")
#: the choice rule (stated in docs/benchmarks/roi_stats_issue18.md before the confirmation draw was run): see
#: :func:`rule`.
RULE = "rule(roi_0.75)"


def roi_windows(
    fg: torch.Tensor, roi: tuple[int, ...], count: int, margin: float, seed: int = 0
) -> list[tuple[slice, ...]] | None:
    """Window slices ``(slice(None), slice(None), *spatial)`` of size ``roi`` in a volume with foreground mask ``fg``
    (spatial shape, at least ``roi`` on every axis): ``count // 2`` centred on foreground voxels, the rest on
    background voxels inside the foreground's bounding box grown by ``margin * roi`` per side; each window shifted to
    lie inside the volume. ``None`` when ``fg`` is empty."""
    shape = fg.shape
    points = fg.nonzero()
    if len(points) == 0:
        return None
    low = [max(0, int(points[:, a].min()) - int(margin * roi[a])) for a in range(len(shape))]
    high = [min(shape[a], int(points[:, a].max()) + 1 + int(margin * roi[a])) for a in range(len(shape))]
    box = torch.zeros_like(fg)
    box[tuple(slice(lo, hi) for lo, hi in zip(low, high))] = True
    background = (box & ~fg).nonzero()
    gen = torch.Generator().manual_seed(seed)
    n_pos = count // 2 if len(background) else count
    centres = [points[torch.randint(len(points), (1,), generator=gen)][0] for _ in range(n_pos)]
    centres += [background[torch.randint(len(background), (1,), generator=gen)][0] for _ in range(count - n_pos)]
    windows = []
    for c in centres:
        starts = [min(max(int(c[a]) - roi[a] // 2, 0), shape[a] - roi[a]) for a in range(len(shape))]
        windows.append((slice(None), slice(None), *(slice(s, s + r) for s, r in zip(starts, roi))))
    return windows


def foreground(logits: torch.Tensor, largest: bool = True) -> torch.Tensor:
    """The predicted foreground of sigmoid ``logits`` ``(1, C, *spatial)``: any channel > 0.5; with ``largest``, only
    its largest connected component (the gland is one organ; the source model's false positives elsewhere, e.g. in the
    wider field of view of ``pelvis``, would centre windows on other tissue)."""
    fg = (torch.sigmoid(logits[0]) > 0.5).any(0)
    if largest and fg.any():
        labels, count = ndimage.label(fg.numpy(), structure=np.ones((3,) * fg.dim()))
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        fg = torch.from_numpy(labels == 1 + int(np.argmax(sizes)))
    return fg.bool()


def roi_statistics(net: torch.nn.Module, x: torch.Tensor, windows: list[tuple[slice, ...]]) -> list:
    """Per-layer BatchNorm statistics of one training-mode forward of the batch of ``windows`` of ``x``."""
    norms = convert_norms(net)
    with statistics_prior(norms, 0.0):
        return pooled_statistics(norms, lambda: net(torch.cat([x[w] for w in windows])), 1)


def stats_shift(net: torch.nn.Module, stats: list | None) -> tuple[float, float]:
    """How far the ROI statistics are from the source running statistics: the KL divergence of the per-channel
    Gaussians ``KL(N(roi) || N(source))``, averaged over channels, for the first BatchNorm layer and averaged over all
    layers (input evidence: an acquisition change moves them, a ROI like the source patches should not)."""
    if stats is None:
        return float("nan"), float("nan")
    values = []
    for layer, (mean, var, _count) in zip(convert_norms(net), stats):
        vs, vr = layer.running_var + layer.eps, var + layer.eps
        kl = 0.5 * ((mean - layer.running_mean) ** 2 / vs + vr / vs - 1.0 - torch.log(vr / vs))
        values.append(float(kl.mean()))
    return values[0], sum(values) / len(values)


def predict_with(
    net: torch.nn.Module, inferer: SlidingWindowInferer, x: torch.Tensor, stats: list | None, prior: float
) -> torch.Tensor:
    """Sliding-window logits of ``x`` (already padded to the window) with statistics ``prior * source + (1 - prior)
    * stats`` (``stats`` ``None``: the source statistics)."""
    norms = convert_norms(net)
    with torch.no_grad():
        if stats is None:
            with statistics_prior(norms, 1.0):
                return inferer(x, net).detach()
        with statistics_prior(norms, prior), case_statistics(norms, stats):
            return inferer(x, net).detach()


def rule(rows: dict[str, dict]) -> str:
    """The candidate the choice rule takes for one volume, from its rows ``{candidate: row}`` (see
    docs/benchmarks/roi_stats_issue18.md): always ``roi_0.75``, statistics ``0.75 * source + 0.25 * ROI`` (the source
    statistics when the source model predicts no foreground: ``roi_empty``). The only fixed candidate no more than 0.5
    Dice below the source model on every site of the design volumes (seed 0, 66 volumes); no signal measured there
    (entropy, mixes, ROI shift) did better."""
    del rows
    return "roi_0.75"


def site_table(rows: list[dict]) -> str:
    """Markdown table: mean Dice per site and overall of :data:`TABLE` and the rule (``*``: > 0.5 below source)."""
    by_case: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
    for r in rows:
        by_case[(r["site"], r["case"])][r["candidate"]] = r
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    chosen: dict[str, int] = defaultdict(int)
    for (site, _case), cands in by_case.items():
        for name in TABLE:
            scores[site][name].append(float(cands[name]["dice"]))
        pick = rule(cands)
        chosen[pick] += 1
        scores[site][RULE].append(float(cands[pick]["dice"]))
    columns = (*TABLE, RULE)
    lines = ["| site | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    site_means = {s: {c: sum(v) / len(v) for c, v in per.items()} for s, per in scores.items()}
    site_means["overall"] = {c: sum(site_means[s][c] for s in scores) / len(scores) for c in columns}
    for site, means in site_means.items():
        cells = [f"{means[c]:.1f}" + ("*" if means[c] < means["stats_1"] - 0.5 else "") for c in columns]
        lines.append(f"| {site} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("rule chose: " + ", ".join(f"{k} {v}" for k, v in sorted(chosen.items())) + f" of {len(by_case)}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?")
    ap.add_argument("dataset_dir", nargs="?")
    ap.add_argument("out_csv")
    ap.add_argument("--sections", nargs="+", default=None, help="datalist sections (default: every target's test)")
    ap.add_argument("--windows", type=int, default=8, help="ROI windows (half on predicted foreground)")
    ap.add_argument("--margin", type=float, default=0.5, help="bounding-box margin, in windows per side")
    ap.add_argument("--all-foreground", dest="largest", action="store_false", help="not only its largest component")
    ap.add_argument("--time", type=int, default=0, help="interleaved timing rounds on the first volume (0: none)")
    ap.add_argument("--table", action="store_true", help="print the table of an existing OUT_CSV and stop")
    args = ap.parse_args()
    if args.table:
        with open(args.out_csv, newline="") as f:
            print(site_table(list(csv.DictReader(f))))
        return
    torch.set_num_threads(1)
    parser = ConfigParser()
    parser.read_config("bundles/grata_prostate_mr_segmentation/configs/inference.json")
    parser["bundle_root"] = parser["dataset_dir"] = args.dataset_dir
    pre = parser.get_parsed_content("labelled_preprocessing")
    net = parser.get_parsed_content("network_def").eval()
    sd = torch.load(args.checkpoint, weights_only=True)
    net.load_state_dict(sd.get("model", sd.get("network", sd)))
    roi = tuple(parser["roi_size"])
    window = dict(roi_size=roi, sw_batch_size=parser["sw_batch_size"], overlap=0.25)
    runs = {
        f"stats_{p:g}": SlidingWindowAdapter(
            NormAdapt(norm={"regime": "mix", "prior": p}), safe=False, mode="gaussian", **window
        )
        for p in PRIORS
    }
    inferer = SlidingWindowInferer(mode="gaussian", **window)
    datalist = json.load(open(os.path.join(args.dataset_dir, "datalist.json")))
    sections = args.sections or [k for k in datalist if k.endswith("_test") and not k.startswith("source")]
    rows, t0, timed = [], time.time(), False
    seen = [0]  # windows forwarded through the network (the cost columns)
    net.register_forward_hook(lambda _m, inputs, _o: seen.__setitem__(0, seen[0] + len(inputs[0])))
    for section in sections:
        for item in datalist[section]:
            files = {k: os.path.join(args.dataset_dir, item[k]) for k in ("image", "label")}
            data = pre(files)
            x, y = data["image"].as_tensor()[None], data["label"].as_tensor() > 0.5
            logits = {name: run(x, net)[0].detach() for name, run in runs.items()}
            xp, crop = pad_to_size(x, roi, mode="constant", value=0.0)
            seen[0] = 0
            source = predict_with(net, inferer, xp, None, 1.0)
            source_windows = seen[0]
            check = source if crop is None else source[crop]
            if not torch.allclose(check[0], logits["stats_1"], atol=1e-4):
                raise RuntimeError("the ROI path's source prediction differs from SlidingWindowAdapter's stats_1.")
            windows = roi_windows(foreground(source, args.largest), roi, args.windows, args.margin)
            stats = roi_statistics(net, xp, windows) if windows is not None else None
            stats_windows = seen[0] - source_windows
            shift_first, shift_all = stats_shift(net, stats)
            for p in PRIORS[1:]:
                out = predict_with(net, inferer, xp, stats, p)
                logits[f"roi_{p:g}"] = (out if crop is None else out[crop])[0]
            if args.time and not timed:
                timed = True

                def source_only(xp=xp):
                    return predict_with(net, inferer, xp, None, 1.0)

                def roi_candidate(xp=xp):
                    src = predict_with(net, inferer, xp, None, 1.0)
                    w = roi_windows(foreground(src, args.largest), roi, args.windows, args.margin)
                    return predict_with(net, inferer, xp, roi_statistics(net, xp, w) if w else None, 0.75)

                medians = interleaved_medians({"source": source_only, "roi_0.75": roi_candidate}, args.time)
                print(ratio_line(f"{item['case_id']} {tuple(x.shape[2:])}", args.time, medians))
            probs = {k: probabilities(v[None], "sigmoid")[0] for k, v in logits.items()}
            for name in logits:
                path, prior = name.split("_")
                near = [f"{path}_{q:g}" for q in mix_neighbours(float(prior))]
                near = [n if n in probs else "stats_1" for n in near]  # roi_1 is the source model
                agree = [float(agreement(probs[name], probs[n], "sigmoid")) for n in near]
                rows.append(
                    {
                        "site": item["domain"],
                        "case": item["case_id"],
                        "candidate": name,
                        "dice": round(dice(probs[name] > 0.5, y), 3),
                        "entropy": round(float(mean_entropy(logits[name][None])), 6),
                        "mixes": round(sum(agree) / len(agree), 6),
                        "area": round(float((probs[name] > 0.5).float().mean()), 6),
                        "roi_empty": int(windows is None),
                        "shift_first": round(shift_first, 6),
                        "shift_all": round(shift_all, 6),
                        "shape": "x".join(str(s) for s in x.shape[2:]),
                        "source_windows": source_windows,
                        "stats_windows": stats_windows,
                    }
                )
            print(
                item["case_id"], f"{time.time() - t0:.0f}s", {r["candidate"]: r["dice"] for r in rows[-len(logits) :]}
            )
    write_case_csv(args.out_csv, rows)
    print(site_table(rows))


if __name__ == "__main__":
    main()
