"""The cache folder of a data generator: a datalist plus a manifest of the request, reused while both still match.

A generator writes its files, then ``datalist.json`` and, last, ``manifest.json`` (the generator's name, version and
arguments). A later call with the same request finds the manifest equal and every listed file present, and skips the
work; any other request, or a folder left incomplete by a kill, is generated again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_tta.data.datalist import PATH_KEYS
from monai_tta.io import atomic_write_json

__all__ = ["DATALIST_NAME", "MANIFEST_NAME", "as_json", "is_complete", "write_generated"]

DATALIST_NAME = "datalist.json"
MANIFEST_NAME = "manifest.json"


def as_json(record: Any) -> Any:
    """``record`` as read back from a JSON file (tuples become lists), so that it compares equal to a manifest.

    Args:
        record: a JSON-serialisable value.

    Returns:
        the value after a JSON round trip.
    """
    return json.loads(json.dumps(record))


def is_complete(root: str | Path, manifest: Mapping, path_keys: Sequence[str] = PATH_KEYS) -> bool:
    """Whether ``root`` holds a finished generation of the request ``manifest``.

    True when ``manifest.json`` equals ``manifest``, ``datalist.json`` parses, and every path (``path_keys``, relative
    to ``root``) of every item of every section that is a list of dictionaries names an existing file.

    Args:
        root: the generator's output folder.
        manifest: the request, as :func:`write_generated` would write it (see :func:`as_json`).
        path_keys: item keys whose values are file paths.

    Returns:
        whether the folder can be reused as it is.
    """
    root = Path(root)
    manifest_file, datalist_file = root / MANIFEST_NAME, root / DATALIST_NAME
    if not (manifest_file.is_file() and datalist_file.is_file()):
        return False
    try:
        if json.loads(manifest_file.read_text()) != manifest:
            return False
        datalist = json.loads(datalist_file.read_text())
        for section in datalist.values():
            if not (isinstance(section, list) and all(isinstance(item, Mapping) for item in section)):
                continue
            for item in section:
                if not all((root / item[key]).is_file() for key in path_keys if key in item):
                    return False
    except (OSError, json.JSONDecodeError, AttributeError, TypeError):
        return False
    return True


def write_generated(root: str | Path, datalist: Mapping, manifest: Mapping) -> Path:
    """Write ``datalist.json`` then ``manifest.json`` (last: it marks the folder complete), each atomically.

    Args:
        root: the generator's output folder.
        datalist: the MONAI datalist, paths relative to ``root``.
        manifest: the request (generator, version, arguments).

    Returns:
        the path of ``datalist.json``.
    """
    root = Path(root)
    datalist_file = atomic_write_json(datalist, root / DATALIST_NAME)
    atomic_write_json(manifest, root / MANIFEST_NAME)
    return datalist_file
