"""Keys of the day/night runner (DyNA): report fields and the events passed to its callback."""

from __future__ import annotations

from monai.utils import StrEnum

__all__ = ["DayNightKeys"]


class DayNightKeys(StrEnum):
    """Keys of the day/night runner (DyNA): report fields and the events passed to its callback.

    Events: ``image`` (a day image was stored), ``day`` (a day ended and was checkpointed), ``night_checkpoint``
    (an intra-night checkpoint was written), ``night`` (a night ended and was checkpointed), ``done``.
    """

    IMAGE_EVENT = "image"
    DAY_EVENT = "day"
    NIGHT_CHECKPOINT_EVENT = "night_checkpoint"
    NIGHT_EVENT = "night"
    DONE_EVENT = "done"
    DAYS = "days"
    N_DAYS = "n_days"
    N_NIGHTS = "n_nights"
    N_IMAGES = "n_images"
    N_FAILED = "n_failed"
    CASES = "cases"
    HELDOUT_FAILED = "heldout_failed"
    DAY = "day"
    START = "start"
    END = "end"
    DAY_DICE = "day_dice"
    NIGHT_ITERATIONS = "night_iterations"
    NIGHT_LOSS = "night_loss"
    HELDOUT_DICE = "heldout_dice"
    INITIAL_HELDOUT_DICE = "initial_heldout_dice"
    FINAL_HELDOUT_DICE = "final_heldout_dice"
    MEAN_DAY_DICE = "mean_day_dice"
    DAY_DICE_PER_GROUP = "day_dice_per_group"
    N_LABELLED_PER_GROUP = "n_labelled_per_group"
    HELDOUT_DICE_PER_GROUP = "heldout_dice_per_group"
    INITIAL_HELDOUT_DICE_PER_GROUP = "initial_heldout_dice_per_group"
    FINAL_HELDOUT_DICE_PER_GROUP = "final_heldout_dice_per_group"
    CONFIG = "config"
    SOURCE_ANCHOR_PER_GROUP = "source_anchor_per_group"
