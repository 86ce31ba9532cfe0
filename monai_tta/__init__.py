"""monai_tta: test-time adaptation for medical image segmentation, as MONAI components and bundles."""

from __future__ import annotations

from monai_tta import (
    adapters,
    data,
    distributed,
    engines,
    gradients,
    handlers,
    inferers,
    losses,
    metrics,
    networks,
    norms,
    padding,
    params,
    reports,
    tgma,
    transforms,
    zoo,
)

__version__ = "0.1.0"

__all__ = [
    "adapters",
    "data",
    "distributed",
    "engines",
    "gradients",
    "handlers",
    "inferers",
    "losses",
    "metrics",
    "networks",
    "norms",
    "padding",
    "params",
    "reports",
    "tgma",
    "transforms",
    "zoo",
    "__version__",
]
