"""SAR: sharpness-aware, reliable entropy minimisation (Niu et al., ICLR 2023)."""

from __future__ import annotations

from monai_tta.adapters.sar.adapter import SAR, max_entropy

__all__ = [
    "SAR",
    "max_entropy",
]
