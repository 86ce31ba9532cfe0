"""A stream of cases that survives bad files: a case that fails to load or validate is recorded and skipped.

:class:`GuardedDataset` catches the error of a case's transform (missing or unreadable file, corrupt image, a failed
:class:`~monai_tta.validation.ValidateCased` check) and returns a small failure record instead of raising.
:class:`CaseStream` iterates such a dataset one case at a time, hands the good cases to the engine and keeps the
failures for the report (:class:`~monai_tta.handlers.CaseReport` drains them in stream order). It can also start after
the first ``skip`` cases without loading them, which is how an interrupted run resumes
(:class:`~monai_tta.handlers.RunCheckpoint`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from monai.data import Dataset
from monai.data.utils import list_data_collate
from torch.utils.data import DataLoader, Subset

from monai_tta.data.datalist import PATH_KEYS
from monai_tta.keys import DataKeys
from monai_tta.validation import InvalidCaseError, case_name

__all__ = ["FAILURE_KEY", "GuardedDataset", "CaseStream", "failure_reason"]

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


class GuardedDataset(Dataset):
    """A MONAI ``Dataset`` whose items never raise: a case whose transform fails becomes a failure record
    ``{"case_id", "domain", "failure": reason}``.

    Args:
        data: the data dictionaries.
        transform: the preprocessing (loading, validation, resizing...).
    """

    def _transform(self, index: int) -> Any:
        item = self.data[index]
        try:
            return super()._transform(index)
        except Exception as e:  # noqa: BLE001 - every failure of a case is recorded, none stops the run
            info = item if isinstance(item, Mapping) else {}
            return {
                DataKeys.CASE_ID.value: case_name(info, default=str(index)),
                DataKeys.DOMAIN.value: str(info.get(DataKeys.DOMAIN, "all")),
                FAILURE_KEY: failure_reason(e, info),
            }


def _is_failure(item: Any) -> bool:
    return isinstance(item, Mapping) and FAILURE_KEY in item


class CaseStream:
    """Iterate a (guarded) dataset one case at a time, in order; failed cases are kept aside, not yielded.

    Args:
        dataset: the cases (a :class:`GuardedDataset` for bad-file tolerance; any map-style dataset works).
        num_workers: data loader workers.
        kwargs: other ``DataLoader`` arguments (``batch_size`` and ``shuffle`` are fixed to 1 and ``False``: a case is
            one batch, in stream order).

    Attributes:
        skip: number of cases at the start of the stream not to load (set by a resumed run before iterating).
        position: number of cases consumed so far (good or failed), counting the skipped ones.
    """

    def __init__(self, dataset: Sequence[Any], num_workers: int = 0, **kwargs: Any) -> None:
        kwargs.pop("batch_size", None), kwargs.pop("shuffle", None)
        self.dataset = dataset
        self.loader_kwargs = {"num_workers": num_workers, **kwargs}
        self.skip = 0
        self.position = 0
        self._failures: list[dict[str, Any]] = []

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.position = self.skip
        self._failures = []
        remaining = Subset(self.dataset, range(min(self.skip, len(self.dataset)), len(self.dataset)))
        for batch in DataLoader(remaining, batch_size=None, shuffle=False, **self.loader_kwargs):
            self.position += 1
            if _is_failure(batch):
                failure = {str(k): str(v) for k, v in batch.items()}
                logger.warning(f"case {failure[DataKeys.CASE_ID]!r} skipped: {failure[FAILURE_KEY]}")
                self._failures.append(failure)
                continue
            yield list_data_collate([batch])

    def pop_failures(self) -> list[dict[str, Any]]:
        """The failure records seen since the last call, in stream order."""
        failures, self._failures = self._failures, []
        return failures
