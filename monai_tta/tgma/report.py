"""TGMA's report: per-case and per-site Dice of every baseline and of TGMA, the LFTM/ITM/DTM tables, the selection, the
rank correlation between LFTM and the true Dice of the sources, a plot; and the summary over leave-one-site-out runs.

Dice is the Dice of a whole case in percent (all its inputs, e.g. the slices of a volume, pooled), mean over the
foreground channels (:func:`monai_tta.metrics.dice_per_channel`). Labels are read here only, never by the run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.utils import look_up_option

from monai_tta.data.keys import DataKeys
from monai_tta.io import atomic_write_json, atomic_write_text
from monai_tta.metrics import dice_per_channel
from monai_tta.reports import markdown_table, plot_domain_dice, summarize, write_case_csv
from monai_tta.tgma.lftm import ACTIVATIONS

__all__ = [
    "ORACLE",
    "MEAN_ENSEMBLE",
    "SELECTED",
    "PSEUDO_LABELS",
    "ADAPTED",
    "GUARDED",
    "GUARD_SOURCE",
    "foreground_label",
    "pooled_case_dice",
    "spearman",
    "evaluate_tgma",
    "write_tgma_report",
    "write_loso_summary",
]

ORACLE = "oracle best source"
MEAN_ENSEMBLE = "mean ensemble"
SELECTED = "TGMA before adaptation"
PSEUDO_LABELS = "TGMA pseudo-labels"
ADAPTED = "TGMA adapted"
#: the bundle's default result (issue 18): per case, the adapted target model unless TGMA before adaptation is as good
#: by a label-free signal (:class:`~monai_tta.tgma.GuardedEnsemble`); present when the run had ``safe`` on.
GUARDED = "TGMA guarded"
#: the summary's count of the cases where the guard chose TGMA before adaptation.
GUARD_SOURCE = "guard chose before adaptation"


def foreground_label(label: Any, activation: str, n_foreground: int) -> torch.Tensor:
    """A label as binary foreground channels ``(C_fg, *spatial)``.

    Sigmoid labels are already ``(C_fg, *spatial)``; softmax labels are class indices ``(1, *spatial)`` or one-hot
    ``(C_fg + 1, *spatial)`` (the background channel is dropped).

    Raises:
        ValueError: if the label's channels fit neither form.
    """
    activation = look_up_option(activation, ACTIVATIONS)
    y = torch.as_tensor(label)
    if activation == "softmax" and y.shape[0] == 1:
        return F.one_hot(y[0].long(), n_foreground + 1).movedim(-1, 0)[1:].to(torch.uint8)
    if activation == "softmax" and y.shape[0] == n_foreground + 1:
        return (y[1:] > 0.5).to(torch.uint8)
    if y.shape[0] == n_foreground:
        return (y > 0.5).to(torch.uint8)
    raise ValueError(
        f"a label with {y.shape[0]} channels does not fit {n_foreground} foreground channels ({activation})."
    )


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties; ``nan`` when either side is constant)."""
    from scipy.stats import rankdata

    ra, rb = rankdata(np.asarray(a, float)), rankdata(np.asarray(b, float))
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def pooled_case_dice(pred: torch.Tensor, label: torch.Tensor) -> float:
    """Dice (%) of one case from its inputs ``(n, C_fg, *spatial)``, pooled, mean over channels."""
    return float(np.mean(dice_per_channel(pred.movedim(0, 1), label.movedim(0, 1))))


def evaluate_tgma(
    results: Mapping[str, Any],
    items: Sequence[Mapping[str, Any]],
    activation: str = "sigmoid",
    label_key: str = DataKeys.LABEL,
    domain_key: str = DataKeys.DOMAIN,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-case Dice of every source, the oracle best source (per domain), the mean ensemble and TGMA's stages.

    Args:
        results: what :meth:`~monai_tta.tgma.TGMARunner.run` returned for ``items``.
        items: the same target inputs, with their labels.
        activation: the models' activation.
        label_key: key of the label in the items.
        domain_key: key of the site of an item (``"target"`` where missing).

    Returns:
        the per-case rows (``case_id``, ``domain``, one Dice per method; with the guard, ``TGMA guarded`` and the
        guard's ``guard_choice`` and ``guard_margin``) and a summary: per-domain means (``dice``), the sources' true
        mean Dice, the Spearman correlation between the DTM and that Dice and, with the guard, per domain the number
        of cases where it chose TGMA before adaptation (``guard_source``) and of cases (``cases``).

    Raises:
        ValueError: if an item has no label.
    """
    names = list(results["names"])
    n_fg = results["pseudo"].shape[1]
    if any(item.get(label_key) is None for item in items):
        raise ValueError(f"every item needs a '{label_key}' to be evaluated.")
    labels = torch.stack([foreground_label(item[label_key], activation, n_fg) for item in items])
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(str(item.get(DataKeys.CASE_ID, i)), []).append(i)
    stages = {
        MEAN_ENSEMBLE: "mean_preds",
        SELECTED: "selected_preds",
        PSEUDO_LABELS: "pseudo",
        ADAPTED: "adapted_preds",
    }
    guard = {str(r["case_id"]): r for r in results.get("guard", [])} if "guarded_preds" in results else None
    if guard is not None:
        stages[GUARDED] = "guarded_preds"
    rows = []
    for case, idx in groups.items():
        row: dict[str, Any] = {"case_id": case, "domain": str(items[idx[0]].get(domain_key, "target"))}
        y = labels[idx]
        for k, name in enumerate(names):
            row[name] = pooled_case_dice(results["source_preds"][k][idx], y)
        for method, key in stages.items():
            row[method] = pooled_case_dice(results[key][idx], y)
        if guard is not None:
            row["guard_choice"], row["guard_margin"] = guard[case]["choice"], float(guard[case]["margin"])
        rows.append(row)
    domains = list(dict.fromkeys(r["domain"] for r in rows))
    for domain in domains:  # the oracle: the source with the best mean Dice on the domain, chosen with its labels
        members = [r for r in rows if r["domain"] == domain]
        best = max(names, key=lambda n: (np.mean([r[n] for r in members]), -names.index(n)))
        for r in members:
            r[ORACLE] = r[best]
            r["oracle_source"] = best
    methods = [*names, ORACLE, MEAN_ENSEMBLE, SELECTED, PSEUDO_LABELS, ADAPTED, *([GUARDED] if guard else [])]
    extra = ["guard_choice", "guard_margin"] if guard is not None else []
    rows = [{k: r[k] for k in ["case_id", "domain", *methods, "oracle_source", *extra]} for r in rows]
    per_domain = summarize([{k: r[k] for k in ["domain", *methods]} for r in rows])
    source_dice = [float(np.mean([r[n] for r in rows])) for n in names]
    dtm = [float(v) for v in results["dtm"]]
    summary = {
        "methods": methods,
        "domains": domains,
        "dice": {m: {d: per_domain[d][m] for d in [*domains, "overall"]} for m in methods},
        "source_dice": dict(zip(names, source_dice)),
        "dtm": dict(zip(names, dtm)),
        "spearman_dtm_dice": spearman(dtm, source_dice),
        "oracle_source": {d: next(r["oracle_source"] for r in rows if r["domain"] == d) for d in domains},
    }
    if guard is not None:
        kept = [r["domain"] for r in rows if r["guard_choice"] == "source"]
        summary["guard_source"] = {d: kept.count(d) for d in domains}
        summary["cases"] = {d: sum(r["domain"] == d for r in rows) for d in domains}
    return rows, summary


def _rank(values: Sequence[float]) -> list[int]:
    order = sorted(range(len(values)), key=lambda k: (-values[k], k))
    ranks = [0] * len(values)
    for r, k in enumerate(order):
        ranks[k] = r + 1
    return ranks


def write_tgma_report(
    results: Mapping[str, Any],
    items: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    activation: str = "sigmoid",
    title: str = "TGMA",
) -> dict[str, Path]:
    """Evaluate (:func:`evaluate_tgma`) and write ``report.json``, ``cases.csv``, ``report.md`` and ``report.png``.

    Args:
        results: what :meth:`~monai_tta.tgma.TGMARunner.run` returned.
        items: the target inputs with their labels.
        output_dir: where to write.
        activation: the models' activation.
        title: heading of the Markdown file and of the plot.

    Returns:
        the paths written, keyed ``json``, ``csv``, ``markdown``, ``plot``.
    """
    out = Path(output_dir)
    rows, summary = evaluate_tgma(results, items, activation)
    names, selection = list(results["names"]), results["selection"]
    dtm, source_dice = [summary["dtm"][n] for n in names], [summary["source_dice"][n] for n in names]
    rank_lftm, rank_dice = _rank(dtm), _rank(source_dice)
    weight = dict(zip(selection["indices"], selection["weights"]))
    role = {k: "main" if j == 0 else "auxiliary" for j, k in enumerate(selection["indices"])}
    sources = {
        n: {
            "DTM": dtm[k],
            "role": role.get(k, "-"),
            "weight": weight.get(k, "-"),
            "LFTM rank": rank_lftm[k],
            "true Dice": source_dice[k],
            "Dice rank": rank_dice[k],
        }
        for k, n in enumerate(names)
    }
    itm = {str(c): dict(zip(names, [float(v) for v in row])) for c, row in zip(results["cases"], results["itm"])}
    losses = results.get("loss_per_epoch", [])
    report = {
        "title": title,
        "summary": summary,
        "selection": {**dict(selection), "names": [names[k] for k in selection["indices"]]},
        "itm": itm,
        "loss_per_epoch": losses,
        "cases": rows,
    }
    paths = {
        "json": out / "report.json",
        "csv": out / "cases.csv",
        "markdown": out / "report.md",
        "plot": out / "report.png",
    }
    atomic_write_json(report, paths["json"])
    write_case_csv(paths["csv"], rows)
    domains = summary["domains"]
    loss_text = f"{losses[0]:.4f} (epoch 1) to {losses[-1]:.4f} (epoch {len(losses)})" if losses else "no epoch run"
    lines = [
        f"# {title}",
        "",
        "Dice in % per case (all slices of a case pooled), mean over the foreground channels; labels are used for "
        "this report only. The oracle is the single source with the best mean Dice on the site (chosen with the "
        "labels, so not a method).",
        "",
        "## Sources: DTM (mean LFTM), selection and true Dice",
        "",
        _table(sources, ["DTM", "role", "weight", "LFTM rank", "true Dice", "Dice rank"], "source"),
        "",
        f"Spearman rank correlation between the DTM and the sources' true Dice: {summary['spearman_dtm_dice']:.3f}.",
        "",
        "## Dice per site",
        "",
        markdown_table(summary["dice"], [*domains, "overall"]),
        "",
        f"Adaptation loss (Dice loss against the pseudo-labels), mean per epoch: {loss_text}.",
        "",
        "## ITM (LFTM of every source on every case)",
        "",
        markdown_table(itm, names, "case", digits=3),
        "",
        "## Dice per case",
        "",
        markdown_table({r["case_id"]: r for r in rows}, summary["methods"], "case"),
        "",
        *_guard_lines(summary, rows),
        "![Dice per site](report.png)",
        "",
    ]
    atomic_write_text("\n".join(lines), paths["markdown"])
    table = {m: {d: summary["dice"][m][d] for d in domains} for m in summary["methods"]}
    plot_domain_dice(table, domains, paths["plot"], title=f"{title}: Dice per target site")
    return paths


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else f"{value:.4f}"


def _guard_lines(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The report's guard section (none without the guard)."""
    if "guard_source" not in summary:
        return []
    chosen = sum(summary["guard_source"].values())
    margins = {r["case_id"]: {"choice": r["guard_choice"], "margin": r["guard_margin"]} for r in rows}
    return [
        f"## {GUARDED}",
        "",
        f"Per case, the adapted target model unless {SELECTED} is as good by a label-free signal (the margin: the "
        f"target's score minus the untouched ensemble's and its source margin; positive keeps the target). It chose "
        f"{SELECTED} on {chosen} of {len(rows)} cases.",
        "",
        markdown_table(margins, ["choice", "margin"], "case", formatter=_cell),
        "",
    ]


def _table(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str], row_title: str) -> str:
    lines = ["| " + " | ".join([row_title, *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, values in rows.items():
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in (values[c] for c in columns)]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def write_loso_summary(
    reports: Mapping[str, str | os.PathLike], output_dir: str | os.PathLike, title: str = "TGMA, leave one site out"
) -> dict[str, Path]:
    """One row per held-out site: best single source, mean ensemble, TGMA's pseudo-labels and adapted model, with the
    guard TGMA guarded and on how many cases it chose TGMA before adaptation, and the rank correlation between LFTM and
    the sources' true Dice; written as ``loso.md``, ``loso.json``, ``loso.png``.

    Args:
        reports: ``{held-out site: path of its report.json}``.
        output_dir: where to write.
        title: heading and plot title.
    """
    out = Path(output_dir)
    summaries = {str(site): json.loads(Path(path).read_text())["summary"] for site, path in reports.items()}
    guarded = bool(summaries) and all(GUARDED in s["dice"] for s in summaries.values())
    columns = [ORACLE, MEAN_ENSEMBLE, SELECTED, PSEUDO_LABELS, ADAPTED, *([GUARDED] if guarded else [])]
    rows: dict[str, dict[str, Any]] = {}
    for site, summary in summaries.items():
        rows[site] = {m: summary["dice"][m]["overall"] for m in columns}
        if guarded:
            rows[site][GUARD_SOURCE] = f"{sum(summary['guard_source'].values())}/{sum(summary['cases'].values())}"
        rows[site]["Spearman LFTM vs Dice"] = summary["spearman_dtm_dice"]
        rows[site]["best source"] = ", ".join(summary["oracle_source"].values())
    if rows:
        rows["mean"] = {m: float(np.mean([r[m] for r in rows.values()])) for m in [*columns, "Spearman LFTM vs Dice"]}
        rows["mean"]["best source"] = "-"
        if guarded:
            chosen = [tuple(map(int, r[GUARD_SOURCE].split("/"))) for s, r in rows.items() if s != "mean"]
            rows["mean"][GUARD_SOURCE] = f"{sum(c for c, _ in chosen)}/{sum(n for _, n in chosen)}"
    paths = {"json": out / "loso.json", "markdown": out / "loso.md", "plot": out / "loso.png"}
    atomic_write_json(rows, paths["json"])
    cells = {s: {c: (f"{v:.2f}" if isinstance(v, float) else v) for c, v in r.items()} for s, r in rows.items()}
    text = [f"# {title}", "", "Dice in % (mean over the held-out site's cases).", ""]
    if guarded:
        text += [
            f"The bundle serves {SELECTED!r} by default (`serve`, issue 18); {GUARDED!r} and {ADAPTED!r} (the "
            "published method) are opt-in.",
            "",
        ]
    shown = [*columns, *([GUARD_SOURCE] if guarded else []), "Spearman LFTM vs Dice", "best source"]
    text.append(_table(cells, shown, "held-out site"))
    atomic_write_text("\n".join([*text, "", "![Dice per held-out site](loso.png)", ""]), paths["markdown"])
    sites = [s for s in rows if s != "mean"]
    plot_domain_dice({m: {s: rows[s][m] for s in sites} for m in columns}, sites, paths["plot"], title=title)
    return paths
