"""TGMA's guard, diagnostic (issue 18): per held-out site and volume, the Dice of the adapted target model and of TGMA
before adaptation, and the differences (target minus before adaptation) of their label-free scores: mixes, entropy
(minus the mean entropy), flip agreement and (``others``) agreement with the mean probabilities of the sources that
were not selected (untouched, no part of the adaptation; evaluated after the bundle's run, not a rule).

Reads a finished leave-one-site-out run of the bundle (``eval/<site>/target_model.pt``, ``models/<site>.pt``); labels
are read for the Dice only. Run from the repository root after the bundle's run::

    python tools/issue18/tgma_signals.py bundles/tgma_prostate_mr_segmentation
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from monai_tta.guards.signals import agreement
from monai_tta.losses import activate
from monai_tta.tgma import GuardedEnsemble, WeightedEnsemble, foreground_label, hard_foreground, probability_entropy
from monai_tta.tgma.lftm import lftm_terms, soft_dice_from_terms
from monai_tta.tgma.report import pooled_case_dice


def _lftm(ensemble: torch.nn.Module, x: torch.Tensor, activation: str, seed: int = 0) -> float:
    """TGMA's own LFTM of an ensemble on one volume (the bundle's margin 4, noise 0.5; the soft-Dice sums pooled over
    the volume's slices, as its ITM level ``"case"``); the ensemble returns probabilities, so it is read through their
    logarithm (whose softmax or sigmoid-free reading gives them back)."""

    def as_logits(z: torch.Tensor) -> torch.Tensor:
        p = ensemble(z).clamp(1e-6, 1 - 1e-6)
        return torch.log(p) if activation == "softmax" else torch.log(p / (1 - p))

    g = torch.Generator().manual_seed(seed)
    inter, total, _ = lftm_terms(as_logits, x, activation, margin=4, strength=0.5, generator=g)
    return float(soft_dice_from_terms(inter.sum(0), total.sum(0)))


def _flip_score(net: torch.nn.Module, x: torch.Tensor, prob: torch.Tensor, activation: str) -> float:
    back = torch.flip(net(torch.flip(x, dims=(-1,))), dims=(-1,))
    return float(agreement(prob, back, activation))


@torch.no_grad()
def main(bundle: Path) -> None:
    os.chdir(bundle)
    parser = ConfigParser()
    parser.read_config("configs/adapt.json")
    parser["generate_data"] = False
    activation = parser.get_parsed_content("activation")
    items_by_site = parser.get_parsed_content("target_items")
    sources = parser.get_parsed_content("sources")
    net_def = parser.get_parsed_content("network_def")
    columns = [
        "site",
        "volume",
        "Dice target",
        "Dice source",
        "mixes t-s",
        "entropy t-s",
        "flip t-s",
        "others t-s",
        "lftm t-s",
    ]
    print("| " + " | ".join([*columns, "chosen (mixes)"]) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for site, items in items_by_site.items():
        saved = torch.load(Path("eval") / site / "target_model.pt", map_location="cpu", weights_only=True)
        names = list(saved["names"])
        target = WeightedEnsemble([net_def() for _ in names], [1.0] * len(names), activation)
        target.load_state_dict(saved["ensemble"])
        source = WeightedEnsemble([copy.deepcopy(sources[n]).cpu() for n in names], [1.0] * len(names), activation)
        source.weights.copy_(saved["ensemble"]["weights"])
        guard = GuardedEnsemble(target, source, serve="guarded").eval()
        rest = [sources[n].cpu().eval() for n in sources if n not in names and n != site]
        groups: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(str(item["case_id"]), []).append(i)
        for case, idx in groups.items():
            x = torch.stack([torch.as_tensor(items[i]["image"]).float() for i in idx])
            guard(x)
            t, s = guard.target(x), guard.source(x)
            n_fg = t.shape[1] - 1 if activation == "softmax" else t.shape[1]
            y = torch.stack([foreground_label(items[i]["label"], activation, n_fg) for i in idx])
            dt = pooled_case_dice(hard_foreground(t, activation), y)
            ds = pooled_case_dice(hard_foreground(s, activation), y)
            ent = float(probability_entropy(s, activation) - probability_entropy(t, activation))
            flip = _flip_score(guard.target, x, t, activation) - _flip_score(guard.source, x, s, activation)
            mixes = guard.last_target_score - guard.last_source_score
            ref = torch.stack([activate(m(x), activation) for m in rest]).mean(0)
            others = float(agreement(t, ref, activation) - agreement(s, ref, activation))
            lftm = _lftm(guard.target, x, activation) - _lftm(guard.source, x, activation)
            print(
                f"| {site} | {case} | {dt:.2f} | {ds:.2f} | {mixes:+.4f} | {ent:+.4f} | {flip:+.4f} | {others:+.4f} | "
                f"{lftm:+.4f} | "
                f"{guard.last_choice} |"
            )


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("bundle", type=Path)
    main(cli.parse_args().bundle.resolve())
