"""Inferers that adapt: volumes adapted on patches and predicted with MONAI's sliding window."""

from __future__ import annotations

from monai_tta.inferers.patches import PATCH_SAMPLING, STATS_SOURCES, sample_patches, window_slices
from monai_tta.inferers.sliding_window import SlidingWindowAdapter, VolumeCase

__all__ = ["SlidingWindowAdapter", "VolumeCase", "PATCH_SAMPLING", "STATS_SOURCES", "sample_patches", "window_slices"]
