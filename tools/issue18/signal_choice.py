"""Issue 18: `safe`'s choice under each label-free signal, replayed on the rows of ``candidates.py``.

Usage::

    python tools/issue18/signal_choice.py CANDIDATES_CSV [CANDIDATES_CSV ...] [--margin M]

Per case, among the candidates of `safe`'s default set made with the source weights (``stats_1``, the source model;
``stats_0.5``; ``stats_0``; ``tent``, the method), the candidate of best score under each signal is chosen with
`safe`'s margins (:class:`monai_tta.guards.SafeChoice` defaults: the source is preferred by ``source_margin`` 0.01, a
candidate of statistics weight ``p`` loses ``mix_margin * (1 - p)`` = 0.01 * (1 - p); TENT's regime is the case's
statistics, ``p = 0``). Prints, per file, a table domain x signal of the Dice (%) of the chosen candidates (``*``:
more than 0.5 below source-only), the overall (mean over domains), the number of domains below and the choices, with
the fixed regimes for reference. The last row, ``mixes_fg if mixes``, is the rule for volumes stated in stop 25
(docs/reliability.md): a candidate replaces the source only where its ``mixes`` is at least the source's and its
``mixes_fg``, with the same margins, beats the source's. ``--margin M`` sets both margins (default: ``safe``'s).
"""

from __future__ import annotations

import collections
import csv
import sys

from monai_tta.guards import SafeChoice

#: signal -> sign (the column's value times the sign is the score, higher better)
SIGNALS = {
    "entropy": -1,
    "flip": 1,
    "consensus": 1,
    "source": 1,
    "mixes": 1,
    "mixes_fg": 1,
    "mixes_hard": 1,
    "dropout": 1,
}
#: candidate -> statistics weight
CANDIDATES = {"stats_1": 1.0, "stats_0.5": 0.5, "stats_0": 0.0, "tent": 0.0}
#: the margins of the shipped choice
SOURCE_MARGIN, MIX_MARGIN = SafeChoice().source_margin, SafeChoice().mix_margin


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def fg_where_mixes(rows: dict[str, dict], source_margin: float, mix_margin: float) -> str:
    """The volume rule of stop 25: ``mixes_fg`` with the margins, among the candidates whose ``mixes`` is not lower
    than the source's (``stats_1``); the source when none beats it."""
    source = rows["stats_1"]
    best, best_score = "stats_1", float(source["mixes_fg"]) + source_margin
    for k, w in CANDIDATES.items():
        if k == "stats_1" or float(rows[k]["mixes"]) < float(source["mixes"]):
            continue
        score = float(rows[k]["mixes_fg"]) - mix_margin * (1.0 - w)
        if score > best_score:
            best, best_score = k, score
    return best


def table(path: str, source_margin: float = SOURCE_MARGIN, mix_margin: float = MIX_MARGIN) -> None:
    cases: dict[tuple[str, str], dict[str, dict]] = collections.defaultdict(dict)
    for row in csv.DictReader(open(path)):
        cases[(row["site"], row["case"])][row["candidate"]] = row
    source = collections.defaultdict(list)
    for (site, _), rows in cases.items():
        source[site].append(float(rows["stats_1"]["dice"]))
    sites = list(source)

    def line(name: str, per: dict[str, list[float]], tail: str = "| |") -> str:
        cells = [f"{mean(per[s]):.1f}" + ("*" if mean(per[s]) < mean(source[s]) - 0.5 else "") for s in sites]
        return f"| {name} | " + " | ".join(cells) + f" | {mean([mean(per[s]) for s in sites]):.2f} {tail}"

    print(path)
    print("| signal | " + " | ".join(sites) + " | overall | below | chosen |")
    print("|---" * (len(sites) + 4) + "|")
    print(line("source-only", source, "| | |"))
    for name in ("stats_0", "stats_0.5", "tent"):
        per = collections.defaultdict(list)
        for (site, _), rows in cases.items():
            per[site].append(float(rows[name]["dice"]))
        print(line(f"fixed {name}", per, "| | |"))

    def chosen_line(name: str, choose) -> str:  # noqa: ANN001 - rows -> the chosen candidate
        per, chosen = collections.defaultdict(list), collections.Counter()
        for (site, _), rows in cases.items():
            best = choose(rows)
            chosen[best] += 1
            per[site].append(float(rows[best]["dice"]))
        below = sum(mean(per[s]) < mean(source[s]) - 0.5 for s in sites)
        return line(name, per, f"| {below} | {dict(chosen)} |")

    def best_by(signal: str, sign: int):  # noqa: ANN202 - the choice under one signal with the margins
        def choose(rows: dict[str, dict]) -> str:
            scores = {
                k: sign * float(rows[k][signal]) + (source_margin if k == "stats_1" else -mix_margin * (1.0 - w))
                for k, w in CANDIDATES.items()
            }
            return max(CANDIDATES, key=lambda k: scores[k])  # ties: the earlier candidate (the source first)

        return choose

    for signal, sign in SIGNALS.items():
        print(chosen_line(signal, best_by(signal, sign)))
    print(chosen_line("mixes_fg if mixes", lambda rows: fg_where_mixes(rows, source_margin, mix_margin)))
    print()


if __name__ == "__main__":
    args = sys.argv[1:]
    margins = (SOURCE_MARGIN, MIX_MARGIN)
    if "--margin" in args:
        i = args.index("--margin")
        margins = (float(args[i + 1]),) * 2
        del args[i : i + 2]
    for csv_path in args:
        table(csv_path, *margins)
