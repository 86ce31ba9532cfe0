"""Issue 18: DyNA's day/night run with ``safe`` off and on against source-only, per target domain.

Usage::

    python tools/issue18/dyna_table.py DATASET_DIR CHECKPOINT OFF_DIR ON_DIR [--no_anchor DIR]

DATASET_DIR holds the ``datalist.json`` the runs read (``generate_fundus_domains(DATASET_DIR, 16, image_size=128,
seed=0, domains=<the 11 target domains>)``), CHECKPOINT the source weights the runs started from, OFF_DIR / ON_DIR
their ``--output_dir`` (``--safe None`` and the bundle's default, ``"case"`` with the source anchor; the bundle writes
``<dir>/DyNA/cases.csv`` and ``report.json``), and ``--no_anchor`` that of a run with ``safe`` on and
``--source_anchor false`` (an extra column). Source-only is the source model on the same stream cases, preprocessed
by the DyNA bundle's ``labelled_preprocessing`` (and beside it the two other fixed regimes: the source weights with the
image's own statistics and with the half mix) and scored with the runner's own
:func:`~monai_tta.adapters.dyna.runner.case_dice`. Prints a Markdown table (Dice %, ``**`` and a warning sign: more
than 0.5 below source-only; "original source": the day cases where the source anchor reported the original source
model's prediction) and, per run, the largest single-case losses against source-only.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
from typing import Any

import torch
from monai.bundle import ConfigParser

from monai_tta.adapters.dyna.runner import case_dice
from monai_tta.data import GuardedDataset, load_datalist
from monai_tta.data.fundus_domains import list_domains
from monai_tta.networks import load_reference_state_dict
from monai_tta.norms import convert_norms, statistics_prior
from monai_tta.reports import read_case_csv

BUNDLE = "bundles/dyna_fundus_segmentation"


def dyna_bundle(dataset_dir: str, checkpoint: str) -> tuple[ConfigParser, Any, torch.nn.Module]:
    """The DyNA bundle's config (reading ``dataset_dir``'s datalist), its ``labelled_preprocessing`` and its network
    with the source weights ``checkpoint``, in ``eval`` mode."""
    parser = ConfigParser()
    parser.read_config([f"{BUNDLE}/configs/inference.json", f"{BUNDLE}/configs/daynight.json"])
    parser.update({"bundle_root": BUNDLE, "datalist_file": os.path.join(dataset_dir, "datalist.json")})
    pre = parser.get_parsed_content("labelled_preprocessing")
    net = parser.get_parsed_content("network_def")
    load_reference_state_dict(net, checkpoint)
    return parser, pre, net.eval()


def fixed_regimes(
    dataset_dir: str, checkpoint: str, domains: list[str], priors: tuple[float, ...] = (1.0, 0.0, 0.5)
) -> dict[float, dict[str, dict[str, float]]]:
    """``{prior: {domain: {case_id: Dice in [0, 1]}}}`` of the source weights with the normalisation statistics
    ``prior * source + (1 - prior) * image`` (1: source-only; 0: the image's own, norm_adapt; 0.5: norm_mix) on every
    case of ``domains``."""
    _, pre, net = dyna_bundle(dataset_dir, checkpoint)
    norms = convert_norms(net)
    data = load_datalist(os.path.join(dataset_dir, "datalist.json"), sections=domains)
    out: dict[float, dict[str, dict[str, float]]] = {p: {} for p in priors}
    with torch.no_grad():
        for domain in domains:
            cases = data[domain]
            for item, case in zip(cases, GuardedDataset(cases, pre)):
                for p in priors:
                    with statistics_prior(norms, p):
                        pred = torch.sigmoid(net(case["image"].float()[None])) >= 0.5
                    out[p].setdefault(domain, {})[item["case_id"]] = case_dice(pred, case["label"].float()[None])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset_dir")
    ap.add_argument("checkpoint")
    ap.add_argument("off_dir")
    ap.add_argument("on_dir")
    ap.add_argument("--no_anchor", default=None, help="output folder of a run with safe on and no source anchor")
    args = ap.parse_args()
    domains = [d for d in list_domains("all") if d != "source"]
    regimes = fixed_regimes(args.dataset_dir, args.checkpoint, domains)
    source = regimes[1.0]
    arms = [("off", args.off_dir), ("on", args.on_dir)]
    if args.no_anchor:
        arms.insert(1, ("no anchor", args.no_anchor))
    runs = {}
    for arm, folder in arms:
        rows = [r for r in read_case_csv(os.path.join(folder, "DyNA", "cases.csv")) if r.get("status") == "ok"]
        report = json.load(open(os.path.join(folder, "DyNA", "report.json")))
        runs[arm] = (rows, report)
    names = {"off": "DyNA safe off", "no anchor": "safe on, no anchor", "on": "DyNA default (safe on, anchor)"}

    def mean(values):
        return 100.0 * sum(values) / len(values)

    print(
        "| domain | n | source-only | image statistics | half mix | "
        + " | ".join(names[a] for a in runs)
        + " | default − off | held-out: source | held-out final, off | held-out final, default | default: choices |"
    )
    print("|---" * (10 + len(runs)) + "|")
    totals: collections.Counter = collections.Counter()
    columns = collections.defaultdict(list)
    for domain in domains:
        day = {arm: [r for r in rows if r["domain"] == domain] for arm, (rows, _) in runs.items()}
        src = mean([source[domain][r["case_id"]] for r in day["off"]])
        fixed = [mean([regimes[p][domain][r["case_id"]] for r in day["off"]]) for p in (0.0, 0.5)]
        held = [source[domain][c] for c in source[domain] if c not in {r["case_id"] for r in day["off"]}]
        values = {arm: mean([float(r["day_dice"]) for r in day[arm]]) for arm in runs}
        final = {arm: 100.0 * report["final_heldout_dice_per_group"][domain] for arm, (_, report) in runs.items()}
        chosen = collections.Counter(r["safe_choice"] for r in day["on"])
        chosen += collections.Counter("original source" for r in day["on"] if r.get("safe_anchor") == "True")
        totals += chosen
        steps = sum(r.get("safe_step") == "True" for r in day["on"])
        cells = [f"**{v:.2f}** ⚠" if v < src - 0.5 else f"{v:.2f}" for v in values.values()]
        choices = ", ".join(f"{k} {n}" for k, n in sorted(chosen.items())) + (f" (step kept {steps})" if steps else "")
        row = (src, *fixed, *values.values(), mean(held), final["off"], final["on"])
        for k, v in enumerate(row):
            columns[k].append(v)
        print(
            f"| {domain} | {len(day['off'])} | {src:.2f} | {fixed[0]:.2f} | {fixed[1]:.2f} | "
            + " | ".join(cells)
            + f" | {values['on'] - values['off']:+.2f} "
            f"| {mean(held):.2f} | {final['off']:.2f} | {final['on']:.2f} | {choices} |"
        )
    m = [sum(v) / len(v) for _, v in sorted(columns.items())]
    k = len(runs) + 2  # the columns before "default - off": source-only, the two fixed regimes, the runs
    print(
        f"| mean of domains | {sum(len([r for r in runs['off'][0] if r['domain'] == d]) for d in domains)} | "
        + " | ".join(f"{v:.2f}" for v in m[: 1 + k])
        + f" | {m[k] - m[3]:+.2f} | "
        + " | ".join(f"{v:.2f}" for v in m[1 + k :])
        + " | "
        + ", ".join(f"{c} {n}" for c, n in sorted(totals.items()))
        + " |"
    )
    flat = {c: d for dom in source.values() for c, d in dom.items()}
    for arm, (rows, _) in runs.items():
        losses = sorted((100.0 * (float(r["day_dice"]) - flat[r["case_id"]]), r["case_id"]) for r in rows)
        print(arm, "largest losses against source-only:", [(round(x, 1), c) for x, c in losses[:3]])


if __name__ == "__main__":
    main()
