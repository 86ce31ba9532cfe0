"""Yes/no options of the bundles as given on ``python -m monai.bundle run``'s command line.

MONAI's bundle command line (``fire``) reads ``--generate_data False`` as the boolean but ``--generate_data false`` as
the *string* ``"false"``, which a config's ``if @generate_data`` takes as true: the run would generate data, or train
a missing source model, exactly when the user asked it not to. :func:`as_flag` reads both spellings and refuses
anything else with the option's name. Bundle configs call it as ``monai_tta.zoo.as_flag`` (re-exported there); the
package's own modules import it from here, so that a method (TGMA's guard) does not depend on the bundle tooling.
"""

from __future__ import annotations

from typing import Any

__all__ = ["as_flag"]

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0", "none", "null", "")


def as_flag(value: Any, name: str = "option") -> bool:
    """``value`` as a bool: a bool, ``None`` (false), 0 or 1, or a string ``true``/``false`` (also ``yes``/``no``,
    ``on``/``off``, ``1``/``0``; any case).

    Args:
        value: the option's value as the config holds it.
        name: the option's name, for the error message.

    Raises:
        ValueError: for any other value.
    """
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{name} must be true or false, got {value!r} (on the command line: --{name} true / false).")
