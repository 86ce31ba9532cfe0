"""A stream of cases that survives bad files: a case that fails to load or validate is recorded and skipped.

:class:`GuardedDataset` catches the error of a case's transform (missing or unreadable file, corrupt image, a failed
:class:`~monai_tta.transforms.validation.ValidateCased` check) and returns a small failure record instead of raising.
:class:`CaseStream` iterates such a dataset one case at a time and hands every case to the engine, a failure as its
record (:class:`~monai_tta.engines.AdaptiveEvaluator` skips the network for it and
:class:`~monai_tta.handlers.CaseReport` writes its row, in stream order). It can also start after
the first ``skip`` cases without loading them, which is how an interrupted run resumes
(:class:`~monai_tta.handlers.RunCheckpoint`). A :class:`GuardedDataset` over a list is also indexable
(``dataset[i]``), for a runner that reads its cases by position (DyNA's
:class:`~monai_tta.adapters.dyna.DayNightRunner`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

from monai.data import IterableDataset
from monai.data.utils import list_data_collate
from monai.transforms import apply_transform

from monai_tta.data.checks import InvalidCaseError, case_name
from monai_tta.data.datalist import PATH_KEYS
from monai_tta.data.keys import DataKeys

__all__ = ["FAILURE_KEY", "GuardedDataset", "CaseStream", "failure_reason", "is_failure"]

#: key of a failure record (its value is the reason).
FAILURE_KEY = "failure"

logger = logging.getLogger(__name__)


_ERROR_LINE = re.compile(r"^\s*([\w.]*(?:Error|error|Exception)): (.+)$", re.MULTILINE)
_MAX_REASON = 300


def failure_reason(error: BaseException, item: Mapping[str, Any] | None = None) -> str:
    """A one-line reason for a failed case.

    The message of a failed validation as it is; a file that does not exist, named; else the first error line of the
    innermost error (MONAI's ``LoadImage`` tries every reader and joins their tracebacks: the first is that of the
    reader asked for), with the case's files.

    Args:
        error: what the case's transform raised.
        item: the case's data dictionary (its file paths are named in the reason).
    """
    inner = error
    while not isinstance(inner, InvalidCaseError) and inner.__cause__ is not None:
        inner = inner.__cause__
    if isinstance(inner, InvalidCaseError):
        return inner.reason
    files = {k: v for k, v in (item or {}).items() if k in PATH_KEYS and isinstance(v, (str, os.PathLike))}
    missing = [f"the {k} file {v} does not exist" for k, v in files.items() if not os.path.exists(v)]
    if missing:
        return "; ".join(missing) + "; check the datalist"
    text = str(inner)
    found = _ERROR_LINE.search(text)
    detail = (
        f"{found.group(1)}: {found.group(2)}"
        if found
        else f"{type(inner).__name__}: {text.splitlines()[0] if text else ''}"
    )
    named = ", ".join(f"{k} {v}" for k, v in files.items())
    reason = f"could not read the case's files ({named}): corrupt, truncated or not an image; {detail}"
    return reason if len(reason) <= _MAX_REASON else reason[: _MAX_REASON - 3] + "..."


class GuardedDataset(IterableDataset):
    """A MONAI ``IterableDataset`` whose items never raise: a case whose transform fails becomes a failure record
    ``{"case_id", "domain", "failure": reason}``.

    When ``data`` is a sequence the dataset has a length and ``dataset[i]`` loads the ``i``-th case (or gives its
    failure record); over an iterable without a length (e.g. :class:`~monai_tta.data.DeferredData`) both raise
    ``TypeError``.

    Args:
        data: the data dictionaries (a list, or any iterable such as :class:`~monai_tta.data.DeferredData`).
        transform: the preprocessing (loading, validation, resizing...).
    """

    def apply(self, item: Any, index: int) -> Any:
        """The transformed ``item`` (the ``index``-th case), or its failure record."""
        try:
            return apply_transform(self.transform, item) if self.transform is not None else item
        except Exception as e:  # noqa: BLE001 - every failure of a case is recorded, none stops the run
            info = item if isinstance(item, Mapping) else {}
            record = {
                DataKeys.CASE_ID.value: case_name(info, default=str(index)),
                DataKeys.DOMAIN.value: str(info.get(DataKeys.DOMAIN, "all")),
                FAILURE_KEY: failure_reason(e, info),
            }
            if DataKeys.STREAM_INDEX in info:
                record[DataKeys.STREAM_INDEX.value] = int(info[DataKeys.STREAM_INDEX])
            return record

    def __iter__(self) -> Iterator[Any]:
        for index, item in enumerate(self.data):
            yield self.apply(item, index)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Any:
        return self.apply(self.data[index], index)


def is_failure(item: Any) -> bool:
    """Whether ``item`` is the failure record of a case (see :class:`GuardedDataset`)."""
    return isinstance(item, Mapping) and FAILURE_KEY in item


class CaseStream:
    """Iterate a :class:`GuardedDataset` one case at a time, in order.

    Each case is yielded as a batch of one (collated); a case that failed to load or validate as its failure record
    (``case_id``, ``domain``, ``failure``: the reason, as strings), which :func:`is_failure` recognises.
    Loading runs in this process: a case is one batch and adaptation, not loading, sets the pace.

    Args:
        dataset: the cases.

    Attributes:
        skip: number of cases at the start of the stream not to load (set by a resumed run before iterating).
        position: number of cases consumed so far (good or failed), counting the skipped ones.
    """

    def __init__(self, dataset: GuardedDataset) -> None:
        if not isinstance(dataset, GuardedDataset):
            raise TypeError(f"CaseStream needs a monai_tta.data.GuardedDataset, got {type(dataset).__name__}.")
        self.dataset = dataset
        self.skip = 0
        self.position = 0

    def cases(self) -> list[Any]:
        """The data items of the stream (not loaded)."""
        return list(self.dataset.data)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.position = 0
        for index, item in enumerate(self.dataset.data):
            self.position = index + 1
            if index < self.skip:
                continue
            out = self.dataset.apply(item, index)
            if is_failure(out):
                failure = {str(k): str(v) for k, v in out.items()}
                logger.warning(f"case {failure[DataKeys.CASE_ID]!r} skipped: {failure[FAILURE_KEY]}")
                out = failure
            yield list_data_collate([out])
