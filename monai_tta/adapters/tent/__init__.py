"""TENT: entropy minimisation of the normalisation affine parameters (Wang et al., ICLR 2021)."""

from __future__ import annotations

from monai_tta.adapters.tent.adapter import Tent

__all__ = [
    "Tent",
]
