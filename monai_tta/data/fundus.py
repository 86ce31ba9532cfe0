"""Loader for the CSV layout of the real fundus optic disc/cup benchmark (GraTa, VPTTA, DyNA).

Layout: each domain ``X`` is described by ``X_train.csv`` and ``X_test.csv`` (``REFUGE_Valid`` by one ``X.csv``), each
with the columns ``image`` and ``mask``: paths relative to the data root. The reference code reads the CSVs from the
data root itself (``<root>/X_train.csv``); a layout with the CSVs inside the domain folder (``<root>/X/X_train.csv``) is
also accepted (its paths may then also be relative to that folder). As in the reference, a domain is the train and
test lists concatenated in that order: the benchmark adapts on, and scores, the whole domain, and the CSV order is the
stream order.

Masks are grey-level images: 255 background, values in (0, 255) disc rim, 0 cup
(see :class:`monai_tta.transforms.label.FundusMaskToChannels`).

``.tif`` masks: the reference data loader rewrites a mask path ending in ``tif`` to ``<name>-1.tif`` *in place, inside*
``__getitem__``, so a second epoch reads ``<name>-1-1.tif``. Here the rewrite is done once, while the list is built, and
the rewritten name is used only when that file exists, otherwise the name as listed (``tif_mask_suffix=None`` turns the
rewrite off).
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from monai_tta.data.keys import DataKeys

__all__ = ["FUNDUS_DOMAINS", "fundus_csv_names", "load_fundus_csv_domain", "fundus_datalist"]

FUNDUS_DOMAINS: tuple[str, ...] = ("RIM_ONE_r3", "REFUGE", "ORIGA", "REFUGE_Valid", "Drishti_GS")
"""The five domains in the reference order (domains A-E of the papers)."""

_IMAGE_COLUMN, _MASK_COLUMN = "image", "mask"


def fundus_csv_names(domain: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The CSV file names a domain may use, in reading order.

    Args:
        domain: domain name, e.g. ``"REFUGE"``.

    Returns:
        ``(split_names, single_names)``: ``("<domain>_train.csv", "<domain>_test.csv")`` and ``("<domain>.csv",)``.
    """
    return (f"{domain}_train.csv", f"{domain}_test.csv"), (f"{domain}.csv",)


def _find_csv_folder(root: Path, domain: str) -> tuple[Path, list[Path]]:
    """Locate the domain's CSVs: ``root/<domain>/`` first, then ``root/``. Returns (folder, csv files in order)."""
    split_names, single_names = fundus_csv_names(domain)
    looked_for = []
    for folder in (root / domain, root):
        split = [folder / name for name in split_names]
        present = [p.is_file() for p in split]
        if all(present):
            return folder, split
        if any(present):
            missing = [str(p) for p, ok in zip(split, present) if not ok]
            raise FileNotFoundError(f"domain {domain!r}: found {split[present.index(True)]} but not {missing[0]}.")
        single = [folder / name for name in single_names]
        if all(p.is_file() for p in single):
            return folder, single
        looked_for += [str(p) for p in split + single]
    raise FileNotFoundError(f"no CSV for fundus domain {domain!r}; looked for: {', '.join(looked_for)}.")


def _read_rows(csv_file: Path) -> list[tuple[str, str]]:
    with open(csv_file, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [name.strip() for name in (reader.fieldnames or [])]
        if _IMAGE_COLUMN not in fields or _MASK_COLUMN not in fields:
            raise ValueError(
                f"{csv_file} must have the columns {_IMAGE_COLUMN!r} and {_MASK_COLUMN!r}, found {fields}."
            )
        rows = []
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            if not row[_IMAGE_COLUMN] or not row[_MASK_COLUMN]:
                raise ValueError(f"{csv_file}, line {line}: empty {_IMAGE_COLUMN!r} or {_MASK_COLUMN!r} entry.")
            rows.append((row[_IMAGE_COLUMN], row[_MASK_COLUMN]))
    return rows


def _resolve(root: Path, csv_folder: Path, names: list[str], check: bool, what: str, csv_file: Path) -> Path:
    """First existing file among ``names``, each tried as is when absolute, else under ``root`` (the reference's
    rule), then under the CSV's folder. When none exists: raise if ``check``, else the first name under ``root``."""
    candidates = []
    for name in names:
        path = Path(name)
        if path.is_absolute():
            candidates.append(path)
        else:
            candidates += [root / path] + ([csv_folder / path] if csv_folder != root else [])
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if check:
        raise FileNotFoundError(
            f"{what} {names[-1]!r} listed in {csv_file} not found; tried: {', '.join(str(c) for c in candidates)}."
        )
    return candidates[0]


def _mask_names(mask: str, suffix: str | None) -> list[str]:
    """Mask names to try: the reference's ``.tif`` -> ``<suffix>.tif`` rewrite first (if it applies), then as listed."""
    if suffix and mask.endswith(".tif"):
        return [mask[: -len(".tif")] + f"{suffix}.tif", mask]
    return [mask]


def load_fundus_csv_domain(
    root: str | os.PathLike,
    domain: str,
    check_files: bool = True,
    tif_mask_suffix: str | None = "-1",
) -> list[dict]:
    """Read one fundus domain from its CSVs, train list then test list.

    Args:
        root: the data root (the reference's ``dataset_root``).
        domain: domain name, e.g. ``"RIM_ONE_r3"`` (any name with ``<domain>_train.csv`` + ``<domain>_test.csv`` or
            ``<domain>.csv`` works).
        check_files: raise if an image or mask file is missing; when False, missing files resolve under ``root``.
        tif_mask_suffix: for masks listed as ``<name>.tif``, use ``<name><suffix>.tif`` when that file exists, else
            the name as listed (the reference's rewrite, applied once per item, never compounded); ``None`` disables
            it.

    Returns:
        a MONAI-style list of ``{"image", "label", "domain", "case_id"}`` dicts with absolute paths. ``case_id`` is
        the image file stem, or the root-relative path without extension where stems repeat within the domain.

    Raises:
        FileNotFoundError: when ``root``, the domain's CSVs, or (with ``check_files``) a listed file is missing.
        ValueError: when a CSV lacks the ``image``/``mask`` columns or has an empty entry.
    """
    root = Path(os.path.abspath(Path(root).expanduser()))
    if not root.is_dir():
        raise FileNotFoundError(f"fundus data root {root} is not a folder.")
    csv_folder, csv_files = _find_csv_folder(root, domain)
    items: list[dict] = []
    for csv_file in csv_files:
        for image_rel, mask_rel in _read_rows(csv_file):
            image = _resolve(root, csv_folder, [image_rel], check_files, "image", csv_file)
            names = _mask_names(mask_rel, tif_mask_suffix)
            mask = _resolve(root, csv_folder, names, check_files, "mask", csv_file)
            items.append(
                {DataKeys.IMAGE.value: str(image), DataKeys.LABEL.value: str(mask), DataKeys.DOMAIN.value: domain}
            )
    stems = Counter(Path(item[DataKeys.IMAGE]).stem for item in items)
    for item in items:
        image = Path(item[DataKeys.IMAGE])
        if stems[image.stem] == 1:
            item[DataKeys.CASE_ID.value] = image.stem
        else:
            rel = image.relative_to(root) if image.is_relative_to(root) else image
            item[DataKeys.CASE_ID.value] = rel.with_suffix("").as_posix()
    return items


def fundus_datalist(
    root: str | os.PathLike,
    domains: Sequence[str] = FUNDUS_DOMAINS,
    check_files: bool = True,
    tif_mask_suffix: str | None = "-1",
) -> dict[str, list[dict]]:
    """Read several fundus domains.

    Args:
        root: the data root.
        domains: domain names, in the order wanted (default: the five benchmark domains in the reference order).
        check_files: see :func:`load_fundus_csv_domain`.
        tif_mask_suffix: see :func:`load_fundus_csv_domain`.

    Returns:
        ``{domain: list of items}`` in the order of ``domains``.

    Raises:
        FileNotFoundError: as :func:`load_fundus_csv_domain`.
        ValueError: as :func:`load_fundus_csv_domain`, or when ``domains`` is empty or repeats a name.
    """
    names = [domains] if isinstance(domains, str) else list(domains)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"domains must be a non-empty sequence of distinct names, got {domains!r}.")
    return {
        name: load_fundus_csv_domain(root, name, check_files=check_files, tif_mask_suffix=tif_mask_suffix)
        for name in names
    }
