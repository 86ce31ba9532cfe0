"""Label encodings: a single-channel integer mask to the multi-label channels a sigmoid network predicts, and back."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, Transform
from monai.utils import StrEnum, TransformBackends, convert_to_dst_type, convert_to_tensor

__all__ = [
    "LabelEncoding",
    "FundusMaskToChannels",
    "FundusMaskToChannelsd",
    "ChannelsToLabelMap",
    "ChannelsToLabelMapd",
]


class LabelEncoding(StrEnum):
    """How the values of a single-channel mask map to output channels.

    - ``fundus``: the optic disc/cup encoding of the fundus benchmark (255 = background, values in (0, 255) = disc rim,
      0 = cup). Output channel 0 is the disc *including* the cup (``label < 255``), channel 1 the cup
      (``label == 0``). The channels are nested, not exclusive.
    - ``binary``: one channel, ``label > 0``.
    - ``onehot``: integer labels ``1..N`` to ``N`` channels (``label == k``); the background ``0`` is dropped.
    """

    FUNDUS = "fundus"
    BINARY = "binary"
    ONEHOT = "onehot"


class FundusMaskToChannels(Transform):
    """Convert a single-channel mask to multi-label channels (default: the fundus disc/cup encoding).

    The input is channel-first with exactly one channel, ``(1, spatial...)``, as produced by ``LoadImage`` followed by
    ``EnsureChannelFirst`` on a grey-level mask. The output has the same spatial shape and the container type of the
    input (numpy stays numpy, a ``MetaTensor`` keeps its metadata).

    The fundus encoding follows the reference loader of the GraTa/VPTTA benchmark: every value below 255 is disc and
    exactly 0 is cup. Apply it to the mask as stored (0..255); a mask rescaled to [0, 1] would be read as all disc.

    Args:
        encoding: one of :class:`LabelEncoding` (``"fundus"``, ``"binary"``, ``"onehot"``).
        num_classes: number of foreground classes; required for ``"onehot"`` and ignored otherwise.
        dtype: output data type (float, for BCE-style losses).

    Raises:
        ValueError: when ``encoding`` is unknown, or ``"onehot"`` is given without a positive ``num_classes``.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        encoding: LabelEncoding | str = LabelEncoding.FUNDUS,
        num_classes: int | None = None,
        dtype: torch.dtype | np.dtype | type | None = torch.float32,
    ) -> None:
        options = [e.value for e in LabelEncoding]
        if str(encoding) not in options:
            raise ValueError(f"encoding must be one of {options}, got {encoding!r}.")
        self.encoding = LabelEncoding(str(encoding))
        if self.encoding == LabelEncoding.ONEHOT:
            if num_classes is None or int(num_classes) < 1:
                raise ValueError(f"encoding='onehot' needs num_classes >= 1, got {num_classes!r}.")
            num_classes = int(num_classes)
        self.num_classes = num_classes
        self.dtype = dtype

    @property
    def out_channels(self) -> int:
        """Number of channels the transform produces."""
        if self.encoding == LabelEncoding.FUNDUS:
            return 2
        if self.encoding == LabelEncoding.BINARY:
            return 1
        return int(self.num_classes)  # type: ignore[arg-type]

    def __call__(self, label: NdarrayOrTensor) -> NdarrayOrTensor:
        """Encode ``label``.

        Args:
            label: channel-first mask of shape ``(1, spatial...)``.

        Returns:
            the encoded mask, ``(out_channels, spatial...)``, same container type as ``label``.

        Raises:
            ValueError: when ``label`` does not have exactly one channel.
        """
        if label.ndim < 2 or label.shape[0] != 1:
            raise ValueError(
                f"expected a channel-first mask with one channel, shape (1, spatial...), got {tuple(label.shape)}. "
                "Load grey-level masks (e.g. PIL mode 'L') and apply EnsureChannelFirst first."
            )
        lab = convert_to_tensor(label, track_meta=get_track_meta())
        if self.encoding == LabelEncoding.FUNDUS:
            channels = [lab < 255, lab == 0]
        elif self.encoding == LabelEncoding.BINARY:
            channels = [lab > 0]
        else:
            channels = [lab == k for k in range(1, self.out_channels + 1)]
        out = torch.cat(channels, dim=0)
        dtype = self.dtype if self.dtype is not None else torch.float32
        encoded, *_ = convert_to_dst_type(out, label, dtype=dtype)
        return encoded


class FundusMaskToChannelsd(MapTransform):
    """Dictionary version of :class:`FundusMaskToChannels`.

    Args:
        keys: keys of the masks to encode.
        encoding: one of :class:`LabelEncoding` (``"fundus"``, ``"binary"``, ``"onehot"``).
        num_classes: number of foreground classes; required for ``"onehot"``.
        dtype: output data type.
        allow_missing_keys: don't raise an exception if a key is missing.

    Raises:
        ValueError: as :class:`FundusMaskToChannels`.
    """

    backend = FundusMaskToChannels.backend

    def __init__(
        self,
        keys: KeysCollection,
        encoding: LabelEncoding | str = LabelEncoding.FUNDUS,
        num_classes: int | None = None,
        dtype: torch.dtype | np.dtype | type | None = torch.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = FundusMaskToChannels(encoding=encoding, num_classes=num_classes, dtype=dtype)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Encode every key of ``data`` named in ``keys``.

        Args:
            data: a data dictionary.

        Returns:
            a shallow copy of ``data`` with the keys encoded.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class ChannelsToLabelMap(Transform):
    """Turn binary prediction channels ``(C, spatial...)`` into one label map ``(1, spatial...)``: 0 is background,
    ``k + 1`` where channel ``k`` is on, and a later channel wins where channels overlap.

    This is the inverse of :class:`FundusMaskToChannels` up to the label values: nested fundus channels (disc
    including cup, cup) give 0 background, 1 disc rim, 2 cup; one-hot channels give their labels ``1..N``; one binary
    channel gives 0/1. MONAI Label expects such a map (one integer per class, 0 = background).

    Args:
        threshold: a channel is on where its value is above ``threshold`` (apply it after a sigmoid and
            ``AsDiscrete(threshold=0.5)``, or directly on probabilities).
        dtype: output data type; ``uint8`` fits up to 255 classes and the PNG writers.

    Raises:
        ValueError: when the input has no channel axis.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, threshold: float = 0.5, dtype: torch.dtype | np.dtype | type | None = torch.uint8) -> None:
        self.threshold = float(threshold)
        self.dtype = dtype

    def __call__(self, pred: NdarrayOrTensor) -> NdarrayOrTensor:
        """Convert ``pred``.

        Args:
            pred: channel-first binary or probability channels ``(C, spatial...)``.

        Returns:
            the label map ``(1, spatial...)``, same container type as ``pred`` (a ``MetaTensor`` keeps its metadata).

        Raises:
            ValueError: when ``pred`` has fewer than two dimensions.
        """
        if pred.ndim < 2:
            raise ValueError(f"expected channel-first predictions (C, spatial...), got shape {tuple(pred.shape)}.")
        p = convert_to_tensor(pred, track_meta=False)  # plain tensor: slicing a MetaTensor's channels corrupts its meta
        out = torch.zeros((1, *p.shape[1:]), dtype=torch.int64, device=p.device)
        for k in range(p.shape[0]):
            out[p[k : k + 1] > self.threshold] = k + 1
        dtype = self.dtype if self.dtype is not None else torch.uint8
        label_map, *_ = convert_to_dst_type(out, pred, dtype=dtype)
        return label_map


class ChannelsToLabelMapd(MapTransform):
    """Dictionary version of :class:`ChannelsToLabelMap`.

    Args:
        keys: keys of the predictions to convert.
        threshold: see :class:`ChannelsToLabelMap`.
        dtype: output data type.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = ChannelsToLabelMap.backend

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float = 0.5,
        dtype: torch.dtype | np.dtype | type | None = torch.uint8,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ChannelsToLabelMap(threshold=threshold, dtype=dtype)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Convert every key of ``data`` named in ``keys``.

        Args:
            data: a data dictionary.

        Returns:
            a shallow copy of ``data`` with the keys converted.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d
