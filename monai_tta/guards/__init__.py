"""Guards attached to an adapter: the non-finite rollback, the collapse safeguard, the safe choice (see protocol)."""

from __future__ import annotations

from monai_tta.guards.anchor import SourceAnchor
from monai_tta.guards.collapse import CollapseSafeguard, CollapseState
from monai_tta.guards.defaults import resolve_guards
from monai_tta.guards.finite import LOSS_KEYS, NonFiniteRollback, nonfinite_part
from monai_tta.guards.protocol import Guard, GuardContext, Verdict
from monai_tta.guards.safe_choice import SafeChoice, SafeChoiceState, candidate_label
from monai_tta.guards.source import ACTIVATIONS, mean_entropy, source_forward, source_model

__all__ = [
    "Guard",
    "GuardContext",
    "Verdict",
    "NonFiniteRollback",
    "nonfinite_part",
    "LOSS_KEYS",
    "CollapseSafeguard",
    "CollapseState",
    "SafeChoice",
    "SafeChoiceState",
    "SourceAnchor",
    "candidate_label",
    "resolve_guards",
    "ACTIVATIONS",
    "mean_entropy",
    "source_model",
    "source_forward",
]
