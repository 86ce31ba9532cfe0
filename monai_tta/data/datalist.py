"""Multi-domain MONAI datalists: one JSON section per domain, and domain streams for continual runs.

A datalist is a MONAI (Decathlon-style) JSON file whose sections are lists of data dictionaries, e.g.::

    {"domains": ["siteA", "siteB"],
     "siteA": [{"image": "siteA/img_001.nii.gz", "label": "siteA/seg_001.nii.gz"}, ...],
     "siteB": [...]}

Images and labels may be PNG, NIfTI or anything ``LoadImage`` reads, with any number of channels: this module only
handles paths and names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from monai_tta.data.keys import DataKeys

__all__ = ["PATH_KEYS", "case_id_from_path", "load_datalist", "domain_stream", "DeferredData"]

PATH_KEYS: tuple[str, ...] = (DataKeys.IMAGE.value, DataKeys.LABEL.value)
"""Keys whose values are file paths, resolved against the datalist folder (or ``base_dir``)."""

_COMPOUND_SUFFIXES = (".nii.gz", ".nrrd.gz", ".mha.gz", ".tar.gz")


def case_id_from_path(path: str | os.PathLike) -> str:
    """Case name from a file path: the file name without its extension (``.nii.gz`` counts as one).

    Args:
        path: a file path.

    Returns:
        the stem, e.g. ``"case_001"`` for ``"/data/case_001.nii.gz"``.
    """
    name = Path(path).name
    for suffix in _COMPOUND_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _join(base_dir: Path, value):
    if isinstance(value, (str, os.PathLike)):
        return os.path.normpath(os.path.join(base_dir, value))
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, os.PathLike)) for v in value):
        return [os.path.normpath(os.path.join(base_dir, v)) for v in value]
    return value


def load_datalist(
    path: str | os.PathLike,
    sections: Sequence[str] | str | None = None,
    base_dir: str | os.PathLike | None = None,
    path_keys: Sequence[str] = PATH_KEYS,
) -> dict[str, list[dict]]:
    """Read the sections of a MONAI datalist JSON, one list of data dictionaries per section.

    Path resolution follows ``monai.data.load_decathlon_datalist``: relative paths are joined to ``base_dir``
    (default: the JSON's folder) and normalised; absolute paths are kept. Unlike MONAI, only ``path_keys`` are
    treated as paths: MONAI also joins any other string that names an existing path, which would turn
    ``"domain": "siteA"`` into a path whenever a folder ``siteA`` sits next to the JSON (the usual layout).
    As in MONAI, a section that is a list of strings (Decathlon's ``"test"``) becomes ``[{"image": ...}, ...]``.

    Each returned item is a new dictionary with ``"domain"`` (its section name, unless the item sets it) and
    ``"case_id"`` (the stem of its image file, unless set).

    Args:
        path: the datalist JSON file.
        sections: section names to read, in the order wanted. ``None`` reads every top-level entry that is a list of
            dictionaries (metadata such as ``"domains": [names]`` is skipped), in file order.
        base_dir: folder that relative paths are relative to; default: the folder of ``path``.
        path_keys: keys whose values are paths.

    Returns:
        ``{section: list of items}``.

    Raises:
        FileNotFoundError: when ``path`` is not a file.
        ValueError: when a requested section is missing, or is not a list of dictionaries or strings, or an item
            has no image.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"datalist file {path} does not exist.")
    with open(path) as f:
        content = json.load(f)
    if not isinstance(content, Mapping):
        raise ValueError(f"{path}: a datalist must be a JSON object of sections, got {type(content).__name__}.")
    base = Path(base_dir).expanduser() if base_dir is not None else path.parent
    base = Path(os.path.abspath(base))

    if sections is None:
        names = [k for k, v in content.items() if isinstance(v, list) and all(isinstance(i, Mapping) for i in v)]
    else:
        names = [sections] if isinstance(sections, str) else list(sections)
        missing = [n for n in names if n not in content]
        if missing:
            available = [k for k, v in content.items() if isinstance(v, list)]
            raise ValueError(f"{path}: no section(s) {missing}; available: {available}.")

    result: dict[str, list[dict]] = {}
    for name in names:
        raw = content[name]
        if not isinstance(raw, list) or not all(isinstance(i, (Mapping, str)) for i in raw):
            raise ValueError(f"{path}: section {name!r} must be a list of dictionaries (or of image paths).")
        items = []
        for index, entry in enumerate(raw):
            item = {DataKeys.IMAGE.value: entry} if isinstance(entry, str) else dict(entry)
            if DataKeys.IMAGE not in item:
                raise ValueError(f"{path}: item {index} of section {name!r} has no {DataKeys.IMAGE.value!r} key.")
            for key in path_keys:
                if key in item:
                    item[key] = _join(base, item[key])
            item.setdefault(DataKeys.DOMAIN.value, name)
            if DataKeys.CASE_ID not in item:
                image = item[DataKeys.IMAGE]
                first = image[0] if isinstance(image, list) and image else image
                item[DataKeys.CASE_ID.value] = case_id_from_path(first)
            items.append(item)
        result[name] = items
    return result


def domain_stream(
    datalist: Mapping[str, Sequence[Mapping]], domains: Sequence[str] | str, rounds: int = 1
) -> list[dict]:
    """Concatenate domain sections into one stream, for continual and multi-round runs.

    The stream is ``rounds`` repetitions of ``datalist[d0] + datalist[d1] + ...``. Items are shallow copies that keep
    their ``"domain"`` (set to the section name where missing), so a consumer can detect domain boundaries.

    Args:
        datalist: ``{domain: items}``, e.g. from :func:`load_datalist` or ``fundus_datalist``.
        domains: section names in stream order.
        rounds: number of passes over the domains (>= 1).

    Returns:
        the stream, a list of data dictionaries.

    Raises:
        ValueError: when ``rounds < 1``, ``domains`` is empty, or a domain is not in ``datalist``.
    """
    names = [domains] if isinstance(domains, str) else list(domains)
    if int(rounds) < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}.")
    if not names:
        raise ValueError("domains must name at least one section.")
    missing = [n for n in names if n not in datalist]
    if missing:
        raise ValueError(f"domains {missing} not in the datalist; available: {list(datalist)}.")
    stream = []
    for _ in range(int(rounds)):
        for name in names:
            for item in datalist[name]:
                copy = dict(item)
                copy.setdefault(DataKeys.DOMAIN.value, name)
                stream.append(copy)
    return stream


class DeferredData(Iterable):
    """Data items read when iterated, not when built.

    A bundle builds its dataset, data loader and evaluator when its config is checked (``ConfigWorkflow``'s
    ``check_properties`` instantiates them), before its ``run`` has written the data; wrapping the datalist in this
    class (with ``monai.data.IterableDataset``) lets those objects exist before the files do, so checking a config
    reads and writes nothing. It has no length: MONAI's engines then count the iterations as they run.

    Args:
        load: called at the start of every iteration; returns the data items (e.g. a :func:`domain_stream`).
    """

    def __init__(self, load: Callable[[], Iterable]) -> None:
        if not callable(load):
            raise TypeError(f"load must be a callable returning the data items, got {type(load).__name__}.")
        self.load = load

    def __iter__(self) -> Iterator:
        return iter(self.load())
