"""How often adaptation was refused: per domain, the cases whose reported prediction is the source model's, and the
cases where ``safe``'s step rule kept only the update (the source model won the choice)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from monai_tta.adapters.stats import StatKeys
from monai_tta.data.keys import DataKeys

__all__ = ["N_FALLBACK", "N_UPDATE_ONLY", "count_fallbacks", "count_update_only", "refusal_warnings"]

#: summary column: cases of a domain predicted by the source model (the safeguard's fallback or safe's choice).
N_FALLBACK = "n_fallback"
#: summary column: cases where the source model won ``safe``'s choice and its step rule kept only the update.
N_UPDATE_ONLY = "n_update_only"


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


def count_update_only(rows: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, int]]:
    """Per domain: ``(cases where safe's step rule kept only the update, cases)``, over rows with ``safe_step``."""
    out: dict[str, tuple[int, int]] = {}
    for row in rows:
        if StatKeys.SAFE_STEP not in row:
            continue
        domain = str(row.get(DataKeys.DOMAIN, ""))
        kept, n = out.get(domain, (0, 0))
        out[domain] = (kept + int(bool(row.get(StatKeys.SAFE_STEP, 0))), n + 1)
    return out


def refusal_warnings(
    method: str, counts: Mapping[str, tuple[int, int]], update_only: Mapping[str, tuple[int, int]] | None = None
) -> list[str]:
    """One line per domain where adaptation was refused on most cases (more than half), and one per domain where on
    most cases the source model won and only the method's update was kept (``update_only``)."""
    lines = [
        f"{method}: adaptation refused on {refused} of {n} cases of domain {domain!r} (the source model's prediction "
        "was reported: the safeguard's fallback or safe's choice; see safe_choice / safeguard_gap in cases.csv)"
        for domain, (refused, n) in counts.items()
        if n and refused * 2 > n
    ]
    lines += [
        f"{method}: on {kept} of {n} cases of domain {domain!r} the source model won safe's choice and only the "
        "update was kept (the adapted weights with the source model's statistics, or the network's own where it has "
        "none; see safe_step / safe_score_* in cases.csv)"
        for domain, (kept, n) in (update_only or {}).items()
        if n and kept * 2 > n
    ]
    return lines
