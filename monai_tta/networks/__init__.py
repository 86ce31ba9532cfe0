"""Segmentation networks: the GraTa/VPTTA ResUNet (reference state-dict names) and a small CPU-friendly UNet."""

from __future__ import annotations

from .resunet import AUX_HEAD_PREFIXES, ResUNet, load_reference_state_dict
from .small_unet import SmallUNet

__all__ = ["AUX_HEAD_PREFIXES", "ResUNet", "SmallUNet", "load_reference_state_dict"]
