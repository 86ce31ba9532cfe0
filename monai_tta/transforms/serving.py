"""Dictionary transforms that run unchanged whether a bundle is run by ``monai.bundle`` or served by MONAI Label.

MONAI Label adds bookkeeping items to the data dictionary next to the image, among them ``image_path`` (a string: the
path of the served file, which its writer reads at the end). MONAI's ``Spacingd`` treats every item whose key starts
with ``"<key>_"`` as a metadata dictionary of a NIfTI image and calls ``update`` on it, so a served NIfTI volume fails
there with ``AttributeError: 'str' object has no attribute 'update'``. :class:`StringItemsAsided` runs a wrapped
transform with such string items set aside and puts them back afterwards (also around its inverse, so that
``Invertd`` undoes the wrapped transform as usual).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.transforms import InvertibleTransform, MapTransform, Transform

__all__ = ["StringItemsAsided"]


class StringItemsAsided(InvertibleTransform):
    """Run a dictionary transform without the string items whose key extends one of its keys (``image_path`` for
    ``image``), then restore them unchanged.

    Args:
        transform: the wrapped dictionary transform (e.g. ``Spacingd``); its ``keys`` name the items whose
            ``<key>_*`` string companions are set aside.

    Raises:
        ValueError: if ``transform`` is not a MONAI ``MapTransform``.
    """

    def __init__(self, transform: Transform) -> None:
        if not isinstance(transform, MapTransform):
            raise ValueError(f"transform must be a MONAI dictionary transform (MapTransform), got {type(transform)}.")
        self.transform = transform

    def _aside(self, data: Mapping[Hashable, Any]) -> tuple[dict[Hashable, Any], dict[Hashable, str]]:
        prefixes = tuple(f"{key}_" for key in self.transform.keys)
        d = dict(data)
        names = [k for k, v in d.items() if isinstance(k, str) and k.startswith(prefixes) and isinstance(v, str)]
        aside = {k: d.pop(k) for k in names}
        return d, aside

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Apply the wrapped transform to ``data`` without its ``<key>_*`` string items, then restore them."""
        d, aside = self._aside(data)
        out = dict(self.transform(d))
        out.update(aside)
        return out

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Undo the wrapped transform (it must be invertible), the string items set aside as in :meth:`__call__`."""
        if not isinstance(self.transform, InvertibleTransform):
            raise ValueError(f"{type(self.transform).__name__} is not invertible.")
        d, aside = self._aside(data)
        out = dict(self.transform.inverse(d))
        out.update(aside)
        return out
