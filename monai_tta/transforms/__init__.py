"""Transforms: label encodings, GraTa's strong style augmentation, flip/rotation views and the 3D volume pipeline."""

from __future__ import annotations

from monai_tta.transforms.intensity import StrongStyle, StrongStyled, gaussian_blur_channel, minmax_per_sample
from monai_tta.transforms.label import FundusMaskToChannels, FundusMaskToChannelsd, LabelEncoding
from monai_tta.transforms.spatial import FLIP_ROT_VIEWS, apply_view, invert_view, views_preserve_shape
from monai_tta.transforms.volume import (
    VOLUME_ACTIVATIONS,
    VOLUME_NORMALIZATIONS,
    VOLUME_READERS,
    volume_postprocessing,
    volume_preprocessing,
)

__all__ = [
    "StrongStyle",
    "StrongStyled",
    "gaussian_blur_channel",
    "minmax_per_sample",
    "FundusMaskToChannels",
    "FundusMaskToChannelsd",
    "LabelEncoding",
    "FLIP_ROT_VIEWS",
    "apply_view",
    "invert_view",
    "views_preserve_shape",
    "VOLUME_ACTIVATIONS",
    "VOLUME_NORMALIZATIONS",
    "VOLUME_READERS",
    "volume_postprocessing",
    "volume_preprocessing",
]
