"""DyNA's night data: the crash-safe store of the images seen by day, and the batches a night trains on.

The store keeps one file per day image and a manifest that lists them; both are written through
:mod:`monai_tta.io` (temporary file, fsync, ``os.replace``), so a reader only ever sees complete files, and an image
becomes visible only once the manifest that lists it has been replaced.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor
from torch.utils.data import Dataset

from monai_tta.adapters.dyna.keys import DayNightKeys
from monai_tta.adapters.dyna.night import ITERATION_KEY, SEED_KEY, derived_seed
from monai_tta.data.keys import DataKeys
from monai_tta.io import atomic_save, atomic_write_json

K = DayNightKeys  # short name of the keys in this module

__all__ = ["DayImageStore", "NightBatches", "night_schedule", "plain_tensor"]


class DayImageStore:
    """A persistent, crash-safe store of the images (and predictions) seen during the days.

    Items are keyed by their stream index. :meth:`put` writes the item file atomically, then replaces the manifest
    atomically; :meth:`get` reads only items listed in the manifest. Writing an index again (a day redone after an
    interruption) replaces its file atomically. Leftover temporary files of an interrupted write are ignored and
    removed when the store is opened.

    Args:
        root: folder of the store (created if needed).
    """

    MANIFEST = "manifest.json"

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        (self.root / "items").mkdir(parents=True, exist_ok=True)
        for folder in (self.root, self.root / "items"):
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink()
        self._items: dict[int, dict[str, Any]] = {}
        manifest = self.root / self.MANIFEST
        if manifest.exists():
            data = json.loads(manifest.read_text())
            self._items = {int(k): v for k, v in data["items"].items()}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, index: int) -> bool:
        return int(index) in self._items

    def indices(self, day: int | None = None) -> list[int]:
        """Stored stream indices in increasing order, optionally only those of ``day``."""
        return sorted(i for i, v in self._items.items() if day is None or v["day"] == day)

    def put(self, index: int, image: torch.Tensor, pred: torch.Tensor | None = None, day: int = 0) -> None:
        """Store a copy of ``image`` (and ``pred``) under stream index ``index``, for ``day``."""
        index = int(index)
        rel = f"items/{index:08d}.pt"
        item = {
            DataKeys.IMAGE.value: plain_tensor(image).detach().cpu().clone(),
            DataKeys.PRED.value: None if pred is None else plain_tensor(pred).detach().cpu().clone(),
            K.DAY.value: int(day),
            "index": index,
        }
        atomic_save(item, self.root / rel)
        items = dict(self._items)
        items[index] = {"file": rel, K.DAY.value: int(day)}
        atomic_write_json({"version": 1, "items": {str(k): items[k] for k in sorted(items)}}, self.root / self.MANIFEST)
        self._items = items

    def get(self, index: int) -> dict[str, Any]:
        """The stored item (``image``, ``pred``, ``day``, ``index``).

        Raises:
            KeyError: if ``index`` is not listed in the manifest.
        """
        entry = self._items.get(int(index))
        if entry is None:
            raise KeyError(f"stream index {index} is not in the store.")
        return torch.load(self.root / entry["file"], map_location="cpu", weights_only=True)


def plain_tensor(x: Any) -> torch.Tensor:
    """``x`` as a plain tensor (a ``MetaTensor``'s data without its metadata)."""
    x = torch.as_tensor(x)
    return x.as_tensor() if isinstance(x, MetaTensor) else x


def night_schedule(
    indices: Sequence[int], batch_size: int, epochs: int = 1, iterations: int | None = None, seed: int = 0
) -> list[list[int]]:
    """The batches of one night: shuffled passes over ``indices``, cut into batches (the last one may be smaller).

    Args:
        indices: stream indices of the night's images.
        batch_size: images per batch.
        epochs: number of passes (ignored when ``iterations`` is given).
        iterations: exact number of batches (passes are chained and the last one truncated).
        seed: seed of the shuffles.
    """
    if not indices:
        return []
    batches: list[list[int]] = []
    epoch = 0
    while (len(batches) < iterations) if iterations is not None else (epoch < epochs):
        g = torch.Generator().manual_seed(derived_seed(seed, "epoch", epoch))
        order = [indices[i] for i in torch.randperm(len(indices), generator=g).tolist()]
        batches.extend(order[i : i + batch_size] for i in range(0, len(order), batch_size))
        epoch += 1
    return batches[:iterations] if iterations is not None else batches


class NightBatches(Dataset):
    """Batches ``schedule[start:]`` of stored images, with the seed and number of each iteration."""

    def __init__(self, store: DayImageStore, schedule: list[list[int]], start: int, seed: int) -> None:
        self.store, self.schedule, self.start, self.seed = store, schedule, start, seed

    def __len__(self) -> int:
        return len(self.schedule) - self.start

    def __getitem__(self, j: int) -> dict[str, Any]:
        k = self.start + j
        images = torch.stack([self.store.get(i)[DataKeys.IMAGE] for i in self.schedule[k]]).float()
        return {DataKeys.IMAGE.value: images, SEED_KEY: derived_seed(self.seed, k), ITERATION_KEY: k + 1}
