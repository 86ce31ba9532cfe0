"""Issue 18: the Dice table (domain x method, `*` more than 0.5 below source-only) and the candidates chosen, from a
benchmark cases.csv: python tools/issue18/signal_table.py <out>/cases.csv."""

import collections
import csv
import sys

rows = list(csv.DictReader(open(sys.argv[1])))
methods = list(dict.fromkeys(r["method"] for r in rows))
doms = list(dict.fromkeys(r["domain"] for r in rows))
d = collections.defaultdict(list)
c = collections.defaultdict(collections.Counter)
for r in rows:
    d[(r["method"], r["domain"])].append(float(r["dice_mean"]))
    c[r["method"]][r.get("safe_choice") or "-"] += 1
    if str(r.get("safe_step", "")).lower() in ("1", "1.0", "true"):
        c[r["method"]]["(step rule)"] += 1


def m(k):
    return sum(d[k]) / len(d[k])


print("| domain | " + " | ".join(methods) + " |")
print("|---" * (len(methods) + 1) + "|")
for dm in doms:
    src = m(("source_only", dm))
    print(
        f"| {dm} | "
        + " | ".join(f"{m((me, dm)):.1f}" + ("*" if m((me, dm)) < src - 0.5 else "") for me in methods)
        + " |"
    )
ov = {me: sum(m((me, dm)) for dm in doms) / len(doms) for me in methods}
print("| overall | " + " | ".join(f"{ov[me]:.1f}" for me in methods) + " |")
for me in methods:
    below = sum(m((me, dm)) < m(("source_only", dm)) - 0.5 for dm in doms)
    print(me, "below:", below, "choices:", dict(c[me]))
