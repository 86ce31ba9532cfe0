"""How often adaptation was refused: per domain, the cases whose reported prediction is the source model's."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from monai_tta.adapters.stats import StatKeys
from monai_tta.data.keys import DataKeys

__all__ = ["N_FALLBACK", "count_fallbacks", "refusal_warnings"]

#: summary column: cases of a domain predicted by the source model (the safeguard's fallback or safe's choice).
N_FALLBACK = "n_fallback"


def _refused(row: Mapping[str, Any]) -> bool:
    return bool(row.get(StatKeys.SAFEGUARD_FALLBACK, 0)) or bool(row.get(StatKeys.SAFE_SOURCE, 0))


def count_fallbacks(rows: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, int]]:
    """Per domain: ``(cases whose prediction is the source model's, cases)``, over rows that carry a guard's
    column (``safeguard_fallback`` or ``safe_source``); domains without such rows are left out."""
    out: dict[str, tuple[int, int]] = {}
    for row in rows:
        if StatKeys.SAFEGUARD_FALLBACK not in row and StatKeys.SAFE_SOURCE not in row:
            continue
        domain = str(row.get(DataKeys.DOMAIN, ""))
        refused, n = out.get(domain, (0, 0))
        out[domain] = (refused + int(_refused(row)), n + 1)
    return out


def refusal_warnings(method: str, counts: Mapping[str, tuple[int, int]]) -> list[str]:
    """One line per domain where adaptation was refused on most cases (more than half)."""
    return [
        f"{method}: adaptation refused on {refused} of {n} cases of domain {domain!r} (the source model's prediction "
        "was reported: the safeguard's fallback or safe's choice; see safe_choice / safeguard_gap in cases.csv)"
        for domain, (refused, n) in counts.items()
        if n and refused * 2 > n
    ]
