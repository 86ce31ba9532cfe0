"""Options and candidate labels of the ``safe`` choice (:class:`~monai_tta.guards.SafeChoice`)."""

from __future__ import annotations

from monai.utils import StrEnum

__all__ = ["SafePer", "SafeCandidate"]


class SafePer(StrEnum):
    """How often the ``safe`` choice (:class:`~monai_tta.guards.SafeChoice`) is made.

    - ``case``: every case picks its own candidate.
    - ``domain``: one candidate per domain, from the entropies of the domain's cases so far.
    """

    CASE = "case"
    DOMAIN = "domain"


class SafeCandidate(StrEnum):
    """Labels of the ``safe`` candidates (``last_stats["safe_choice"]``): the method's own prediction, the adapted
    state with statistics weight ``p`` (``"stats_<p>"``, e.g. ``"stats_0.5"``), the source model."""

    METHOD = "method"
    STATS = "stats"
    SOURCE = "source"
