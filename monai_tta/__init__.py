"""monai_tta: test-time adaptation for medical image segmentation, as MONAI components and bundles."""

from __future__ import annotations

from monai_tta import (
    adapters,
    bundle_utils,
    data,
    distributed,
    engines,
    gradients,
    handlers,
    inferers,
    keys,
    losses,
    metrics,
    networks,
    norms,
    padding,
    params,
    reports,
    tgma,
    transforms,
)

__version__ = "0.1.0"

__all__ = [
    "adapters",
    "bundle_utils",
    "data",
    "distributed",
    "engines",
    "gradients",
    "handlers",
    "inferers",
    "keys",
    "losses",
    "metrics",
    "networks",
    "norms",
    "padding",
    "params",
    "reports",
    "tgma",
    "transforms",
    "__version__",
]
