"""Adaptation methods: each one is a MONAI ``Inferer`` (``adapter(inputs, network) -> logits``); the guards they
run are in :mod:`monai_tta.guards` (``SafeChoice`` and ``CollapseSafeguard`` are also named here)."""

from __future__ import annotations

from monai_tta.adapters.base import Adapter
from monai_tta.adapters.cases import Case, CaseParts, WholeCase
from monai_tta.adapters.dyna.night import NightTrainer, confident_pseudo_label, ema_update_, random_flips
from monai_tta.adapters.grata import GraTa, cosine_lr
from monai_tta.adapters.optimizers import build_optimizer, set_lr
from monai_tta.adapters.safe import SafeNorm
from monai_tta.adapters.sar import SAR, max_entropy
from monai_tta.adapters.source_only import NormAdapt, SourceOnly
from monai_tta.adapters.state import AdapterState
from monai_tta.adapters.tent import Tent
from monai_tta.adapters.vptta import VPTTA
from monai_tta.guards import CollapseSafeguard, SafeChoice

__all__ = [
    "Adapter",
    "AdapterState",
    "build_optimizer",
    "set_lr",
    "Case",
    "CaseParts",
    "WholeCase",
    "SourceOnly",
    "NormAdapt",
    "SafeNorm",
    "SafeChoice",
    "CollapseSafeguard",
    "Tent",
    "GraTa",
    "cosine_lr",
    "SAR",
    "max_entropy",
    "VPTTA",
    "NightTrainer",
    "confident_pseudo_label",
    "ema_update_",
    "random_flips",
]
