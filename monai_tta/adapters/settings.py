"""The adaptation settings: when an adapter returns to the source state.

:class:`Setting` names the three settings; :class:`ResetSchedule` is an adapter's bookkeeping of them along a stream:
the domain last given, a reset the domain change left pending, a domain change the guards have not yet been told of,
and the per-patient default of the ``"domain"`` setting for cases that name their file while no domain is given.
The adapter (:class:`~monai_tta.adapters.Adapter`) asks it at each case whether the case starts with the setting's
reset, and takes the reset itself.
"""

from __future__ import annotations

import logging
from typing import Any

from monai.data import MetaTensor
from monai.utils import StrEnum

__all__ = ["Setting", "ResetSchedule", "names_a_case"]


class Setting(StrEnum):
    """When an adapter returns to the source state.

    - ``episodic``: before every case.
    - ``domain``: whenever the domain of the incoming case changes (GraTa's published protocol).
    - ``continual``: never (VPTTA's protocol).
    """

    EPISODIC = "episodic"
    DOMAIN = "domain"
    CONTINUAL = "continual"


def names_a_case(inputs: Any) -> bool:
    """Whether ``inputs`` says which case it is: a ``MetaTensor`` whose metadata name its source file."""
    if not isinstance(inputs, MetaTensor):
        return False
    name = inputs.meta.get("filename_or_obj")
    return bool(name) and not (isinstance(name, (list, tuple)) and not any(name))


class ResetSchedule:
    """An adapter's setting along a stream: which cases start from the source state, and when a domain changes.

    Args:
        owner: the adapter's name, in the one-time warning of the per-patient default.
        logger: where that warning goes.

    Attributes:
        domain: the domain last given to :meth:`set_domain` (``None``: none yet).
        pending_reset: a domain change in the ``"domain"`` setting asked for a reset before the next case.
        domain_changed: the domain changed since the guards were last told (their
            :meth:`~monai_tta.guards.Guard.on_domain_change`; the adapter clears it after telling them).
    """

    def __init__(self, owner: str, logger: logging.Logger) -> None:
        self.owner, self.logger = owner, logger
        self.domain: Any = None
        self.pending_reset = False
        self.domain_changed = False
        self.said_per_patient = False

    def set_domain(self, domain: Any, setting: str) -> None:
        """The domain of the next case; a change is remembered, and in the ``"domain"`` setting leaves a reset
        pending."""
        if self.domain is not None and domain != self.domain:
            self.domain_changed = True
            if setting == Setting.DOMAIN:
                self.pending_reset = True
        self.domain = domain

    def reset_due(self, setting: str, inputs: Any) -> bool:
        """Whether the case ``inputs`` starts with the setting's reset: every case (``"episodic"``), a pending domain
        change, or, in the ``"domain"`` setting while no domain was given, a case that names its file (per patient;
        said once in a warning). The caller takes the reset and then clears :attr:`pending_reset`."""
        per_patient = setting == Setting.DOMAIN and self.domain is None and names_a_case(inputs)
        if per_patient and not self.said_per_patient:
            self.said_per_patient = True
            self.logger.warning(
                "%s (setting 'domain'): no domain was given with set_domain, so each case is adapted from the source "
                "model (per patient). Give each case's domain (an evaluator's batch 'domain' key) to adapt per domain, "
                "or setting='continual' to carry adaptation from case to case.",
                self.owner,
            )
        return setting == Setting.EPISODIC or per_patient or self.pending_reset

    def state_dict(self) -> dict[str, Any]:
        """The bookkeeping in plain values (a domain that is not a string or a number is kept as its text)."""
        domain = self.domain
        return {
            "domain": domain if domain is None or isinstance(domain, (str, int, float)) else str(domain),
            "pending_reset": bool(self.pending_reset),
            "domain_changed": bool(self.domain_changed),
        }

    def load_state_dict(self, values: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the keys of an adapter's state dict that hold it)."""
        self.domain = values["domain"]
        self.pending_reset = bool(values["pending_reset"])
        self.domain_changed = bool(values.get("domain_changed", False))
