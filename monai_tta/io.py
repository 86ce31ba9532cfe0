"""Atomic writes: the one place where the package writes result files.

Every file is written to a temporary name in the same folder, flushed and fsync'ed, then moved into place with
``os.replace``, so a reader (or a run resumed after a kill) only ever sees a complete old or a complete new version.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_write", "atomic_save", "atomic_write_json", "atomic_write_text", "atomic_write_bytes"]


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], sync: bool = True) -> Path:
    """Call ``write(f)`` on a binary file object, then move the file onto ``path`` atomically.

    Args:
        path: the destination; its folder is created if needed.
        write: writes the content to the open binary file it is given.
        sync: fsync the file and its folder, so that the new version survives a system crash. ``False`` keeps the
            atomic replacement (a killed process still leaves the old or the new file) and skips the fsyncs: for
            many files that a later, synced file (such as a generator's manifest) vouches for.

    Returns:
        the destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    if not sync:
        return path
    try:  # make the rename itself durable where the platform allows it
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_bytes(data: bytes, path: str | os.PathLike, sync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (``sync``: as in :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data), sync=sync)


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(text.encode("utf-8"), path)


def atomic_write_json(data: Any, path: str | os.PathLike) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(json.dumps(data, indent=2, sort_keys=False), path)
