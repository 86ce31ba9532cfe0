"""The guards of an adapter: today's defaults, and the ``safeguard=`` / ``safe=`` shorthands that build them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai_tta.guards.collapse import CollapseSafeguard
from monai_tta.guards.finite import NonFiniteRollback
from monai_tta.guards.protocol import Guard
from monai_tta.guards.safe_choice import SafeChoice

__all__ = ["resolve_guards"]


def resolve_guards(
    guards: Sequence[Guard | None] | None,
    safeguard: CollapseSafeguard | dict | bool | None = None,
    safe: SafeChoice | dict | bool | str | None = None,
    uses_optimizer: bool = True,
) -> tuple[Guard, ...]:
    """The guards an adapter runs, in order.

    Without ``guards``, the defaults: :class:`NonFiniteRollback`, then :class:`CollapseSafeguard` from ``safeguard``
    (:meth:`CollapseSafeguard.from_any`: ``None`` on for a method with an optimizer), then :class:`SafeChoice` from
    ``safe`` (:meth:`SafeChoice.from_any`: ``None`` off). With ``guards``, a shorthand that is given (not ``None``)
    changes the guard of its kind in the list, in place: ``False`` removes it, ``True`` keeps it (or adds the
    default), a dict or a guard replaces it (so a bundle that lists its guards still takes ``inferer#safeguard``).
    A guard the list lacks is added where the defaults put it.

    Args:
        guards: the guards, in the order they run; ``None`` entries are left out (a config switches one off by
            setting it to ``null``).
        safeguard: the shorthand of the collapse safeguard.
        safe: the shorthand of the safe choice.
        uses_optimizer: whether the method updates parameters with an optimizer.

    Raises:
        TypeError: for a guard that is not a :class:`~monai_tta.guards.Guard`, or a ``safe`` of another type.
    """
    if guards is None:
        found = [NonFiniteRollback(), CollapseSafeguard.from_any(safeguard, uses_optimizer), SafeChoice.from_any(safe)]
        return tuple(g for g in found if g is not None)
    out = [g for g in guards if g is not None]
    for g in out:
        if not isinstance(g, Guard):
            raise TypeError(f"guards must be monai_tta.guards.Guard objects, got {type(g).__name__}.")
    if safeguard is not None:
        out = _replace(out, CollapseSafeguard, safeguard, CollapseSafeguard.from_any(safeguard, True), SafeChoice)
    if safe is not None:
        out = _replace(out, SafeChoice, safe, SafeChoice.from_any(safe), None)
    return tuple(out)


def _replace(guards: list[Guard], kind: type, value: Any, new: Guard | None, before: type | None) -> list[Guard]:
    """``guards`` with those of ``kind`` replaced by ``new`` (at the first one's place, else before the first guard of
    type ``before``, else at the end); ``value=True`` keeps them as they are."""
    at = next((i for i, g in enumerate(guards) if isinstance(g, kind)), None)
    if value is True and at is not None:
        return guards
    kept = [g for g in guards if not isinstance(g, kind)]
    if new is None:
        return kept
    if at is None:
        at = next((i for i, g in enumerate(kept) if before is not None and isinstance(g, before)), len(kept))
    kept.insert(at, new)
    return kept
