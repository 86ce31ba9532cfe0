"""The guards of an adapter: today's defaults, and the ``safeguard=`` / ``safe=`` shorthands that build them."""

from __future__ import annotations

from collections.abc import Sequence

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

    Args:
        guards: the guards, in the order they run (``None`` entries are left out, so a config can switch one off
            by setting it to ``null``); ``None``: the defaults, :class:`NonFiniteRollback` then
            :class:`CollapseSafeguard` (from ``safeguard``, see :meth:`CollapseSafeguard.from_any`) then
            :class:`SafeChoice` (from ``safe``, see :meth:`SafeChoice.from_any`).
        safeguard: the shorthand of the collapse safeguard (``None``: on for a method with an optimizer).
        safe: the shorthand of the safe choice (``None``: off).
        uses_optimizer: whether the method updates parameters with an optimizer.

    Raises:
        ValueError: if ``guards`` is given with ``safeguard`` or ``safe``.
        TypeError: for a guard that is not a :class:`~monai_tta.guards.Guard`.
    """
    if guards is None:
        found = [NonFiniteRollback(), CollapseSafeguard.from_any(safeguard, uses_optimizer), SafeChoice.from_any(safe)]
        return tuple(g for g in found if g is not None)
    if safeguard is not None or safe is not None:
        raise ValueError(
            "give the guards either as a list (guards=[...]) or by the shorthands safeguard= and safe=, not both: "
            "put the CollapseSafeguard and SafeChoice objects in the list instead."
        )
    out = tuple(g for g in guards if g is not None)
    for g in out:
        if not isinstance(g, Guard):
            raise TypeError(f"guards must be monai_tta.guards.Guard objects, got {type(g).__name__}.")
    return out
