"""Adaptation methods: each one is a MONAI ``Inferer`` (``adapter(inputs, network) -> logits``)."""

from __future__ import annotations

from monai_tta.adapters.base import Adapter, AdapterState, build_optimizer, set_lr
from monai_tta.adapters.cases import Case, CaseParts, WholeCase
from monai_tta.adapters.dyna.night import NightTrainer, confident_pseudo_label, ema_update_, random_flips
from monai_tta.adapters.grata import GraTa, cosine_lr
from monai_tta.adapters.safe import SafeNorm
from monai_tta.adapters.safe_choice import SafeChoice
from monai_tta.adapters.safeguard import CollapseSafeguard
from monai_tta.adapters.sar import SAR, max_entropy
from monai_tta.adapters.source_only import NormAdapt, SourceOnly
from monai_tta.adapters.tent import Tent
from monai_tta.adapters.vptta.adapter import VPTTA

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
    "DayNightRunner",
    "write_daynight_summary",
    "NightTrainer",
    "confident_pseudo_label",
    "ema_update_",
    "random_flips",
]
