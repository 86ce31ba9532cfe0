"""Named presets of a data generator's domains or sites: one rule for reading a request of names."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["preset_names", "resolve_names"]


def preset_names(
    preset: str,
    presets: Mapping[str, Sequence[str]],
    default: Mapping[str, Any],
    content: Mapping[str, Any],
    noun: str,
) -> list[str]:
    """The names of a generator's preset, read at call time from its registries.

    ``"default"`` is the keys of ``default`` (an entry added to the registry is listed), ``"all"`` those and then the
    keys of ``content`` not already listed, any other preset its entry of ``presets``.

    Args:
        preset: a key of ``presets``.
        presets: the generator's named lists of names.
        default: the registry of the default preset (name -> parameters).
        content: the registry of the content shifts (name -> parameters).
        noun: what the preset lists, for the message (``"fundus domain"``, ``"MR site"``).

    Raises:
        ValueError: for an unknown preset.
    """
    if preset == "default":
        return list(default)
    if preset == "all":
        return [*default, *(n for n in content if n not in default)]
    if preset not in presets:
        raise ValueError(f"unknown {noun} preset {preset!r}; available: {list(presets)}.")
    return list(presets[preset])


def resolve_names(
    request: str | Sequence[str] | None,
    presets: Mapping[str, Any],
    list_names: Callable[..., list[str]],
    check: Callable[[str], Any],
    noun: str,
) -> list[str]:
    """The names of a request: ``None`` is the default preset, a preset name its list, else the names.

    Args:
        request: ``None``, a preset name, one name, or a sequence of names.
        presets: the generator's presets (their keys are the preset names).
        list_names: ``list_names()`` the default preset's names, ``list_names(preset)`` a preset's.
        check: validates one name (raises ``ValueError`` for an unknown one).
        noun: what a name names, plural (``"domains"``, ``"sites"``), for the messages.

    Returns:
        the names, each validated.

    Raises:
        ValueError: for an unknown or repeated name, or an empty list.
    """
    if request is None:
        names = list_names()
    elif isinstance(request, str):
        names = list_names(request) if request in presets else [request]
    else:
        names = [str(n) for n in request]
    if not names:
        raise ValueError(f"{noun} must name at least one {noun[:-1]}.")
    for name in names:
        check(name)
    if len(set(names)) != len(names):
        raise ValueError(f"{noun} must not repeat a name, got {names}.")
    return names
