"""Keys of a case: its data dictionary and the outcome column of its per-case record."""

from __future__ import annotations

from monai.utils import StrEnum

__all__ = ["DataKeys", "CaseStatus"]


class DataKeys(StrEnum):
    """Keys of a data dictionary (one case).

    ``IMAGE``, ``LABEL`` and ``PRED`` match :class:`monai.utils.CommonKeys`, so MONAI handlers and ``from_engine`` work.
    ``STREAM_INDEX`` (a case's position in the single-process stream) and ``STREAM_SEGMENT`` (its run of consecutive
    cases of one domain) are set by :func:`monai_tta.distributed.shard_stream`.
    """

    IMAGE = "image"
    LABEL = "label"
    PRED = "pred"
    DOMAIN = "domain"
    CASE_ID = "case_id"
    STREAM_INDEX = "stream_index"
    STREAM_SEGMENT = "stream_segment"


class CaseStatus(StrEnum):
    """The outcome column of a per-case record: its name (``KEY``), its values and the column of the reason."""

    KEY = "status"
    OK = "ok"
    FAILED = "failed"
    ERROR = "error"
