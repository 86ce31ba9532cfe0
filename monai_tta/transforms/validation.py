"""Dictionary transforms that check each case as it is loaded (see :mod:`monai_tta.data.checks`)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from monai_tta.data.checks import case_name, check_image, check_label
from monai_tta.data.keys import DataKeys

__all__ = ["ValidateCased", "RecordShaped", "stored_shape_key"]


def stored_shape_key(key: str) -> str:
    """The data key under which :class:`RecordShaped` keeps the stored spatial shape of ``key``.

    A prefix, not a suffix: MONAI's ``Spacingd`` treats every key starting with ``"<key>_"`` as a metadata dictionary
    of ``key`` and updates it.
    """
    return f"stored_shape_{key}"


class ValidateCased(MapTransform):
    """Check a loaded, channel-first case (image and, when present, label) before any resizing.

    Args:
        keys: the image key (one key).
        label_key: the label key (checked when present).
        in_channels: expected number of image channels.
        spatial_dims: expected number of spatial axes.
        min_size: smallest allowed spatial size of the image as stored.
        max_size: largest allowed spatial size of the image as stored.
        allow_missing_keys: do not fail when the label is missing.

    Raises:
        InvalidCaseError: when a case fails a check (see :func:`check_image` and :func:`check_label`).
    """

    def __init__(
        self,
        keys: KeysCollection = DataKeys.IMAGE,
        label_key: str | None = DataKeys.LABEL,
        in_channels: int | None = None,
        spatial_dims: int | None = None,
        min_size: int | None = None,
        max_size: int | None = None,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key
        self.in_channels, self.spatial_dims = in_channels, spatial_dims
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            case = case_name(d)
            check_image(d[key], case, self.in_channels, self.spatial_dims, False, self.min_size, self.max_size)
            label = d.get(self.label_key) if self.label_key is not None else None
            if isinstance(label, (torch.Tensor, np.ndarray)):  # a label still a path is not loaded by this pipeline
                check_label(d[self.label_key], d[key], case, d.get(stored_shape_key(self.label_key)))
        return d


class RecordShaped(MapTransform):
    """Keep the spatial shape of each key's array as loaded (channel-first), under :func:`stored_shape_key`, so that
    :class:`ValidateCased` can compare a label resized before the image is loaded with the image as stored.

    Args:
        keys: the keys to record (e.g. ``"label"``).
        allow_missing_keys: do not fail when a key is missing.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[stored_shape_key(str(key))] = [int(s) for s in d[key].shape[1:]]
        return d
