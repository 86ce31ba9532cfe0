"""Transforms: label encodings and label maps, GraTa's strong style augmentation, flip/rotation views and the 3D volume
pipeline."""

from __future__ import annotations

from monai_tta.transforms.intensity import StrongStyle, StrongStyled, gaussian_blur_channel, minmax_per_sample
from monai_tta.transforms.label import (
    ChannelsToLabelMap,
    ChannelsToLabelMapd,
    FundusMaskToChannels,
    FundusMaskToChannelsd,
    LabelEncoding,
)
from monai_tta.transforms.serving import StringItemsAsided
from monai_tta.transforms.spatial import FLIP_ROT_VIEWS, VIEW_DIMS, apply_view, invert_view, views_preserve_shape
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
    "ChannelsToLabelMap",
    "ChannelsToLabelMapd",
    "StringItemsAsided",
    "FLIP_ROT_VIEWS",
    "VIEW_DIMS",
    "apply_view",
    "invert_view",
    "views_preserve_shape",
    "VOLUME_ACTIVATIONS",
    "VOLUME_NORMALIZATIONS",
    "VOLUME_READERS",
    "volume_postprocessing",
    "volume_preprocessing",
]
