"""DyNA (day-night adaptation): the night trainer, the day/night runner, its day-image store and its report."""

from __future__ import annotations

from monai_tta.adapters.dyna.night import (
    NightTrainer,
    PackedMaskedDiceBCELoss,
    confident_pseudo_label,
    derived_seed,
    ema_update_,
    random_flips,
)
from monai_tta.adapters.dyna.report import write_daynight_summary
from monai_tta.adapters.dyna.runner import DayNightRunner, case_dice
from monai_tta.adapters.dyna.store import DayImageStore, NightBatches, night_schedule

__all__ = [
    "NightTrainer",
    "PackedMaskedDiceBCELoss",
    "confident_pseudo_label",
    "derived_seed",
    "ema_update_",
    "random_flips",
    "write_daynight_summary",
    "DayNightRunner",
    "case_dice",
    "DayImageStore",
    "NightBatches",
    "night_schedule",
]
