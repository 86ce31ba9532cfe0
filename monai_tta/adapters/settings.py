"""The adaptation settings: when an adapter returns to the source state."""

from __future__ import annotations

from monai.utils import StrEnum

__all__ = ["Setting"]


class Setting(StrEnum):
    """When an adapter returns to the source state.

    - ``episodic``: before every case.
    - ``domain``: whenever the domain of the incoming case changes (GraTa's published protocol).
    - ``continual``: never (VPTTA's protocol).
    """

    EPISODIC = "episodic"
    DOMAIN = "domain"
    CONTINUAL = "continual"
