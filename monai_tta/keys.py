"""Shared key constants: data dictionary keys, adaptation statistics and option names."""

from __future__ import annotations

from monai.utils import StrEnum

__all__ = ["DataKeys", "CaseStatus", "StatKeys", "Setting", "NormRegime", "SafePer", "SafeCandidate", "DayNightKeys"]


class DataKeys(StrEnum):
    """Keys of a data dictionary (one case).

    ``IMAGE``, ``LABEL`` and ``PRED`` match :class:`monai.utils.CommonKeys`, so MONAI handlers and ``from_engine`` work.
    ``STREAM_INDEX`` (a case's position in the single-process stream) and ``STREAM_SEGMENT`` (its run of consecutive
    cases of one domain) are set by :func:`monai_tta.distributed.shard_stream`.
    """

    IMAGE = "image"
    LABEL = "label"
    PRED = "pred"
    DOMAIN = "domain"
    CASE_ID = "case_id"
    STREAM_INDEX = "stream_index"
    STREAM_SEGMENT = "stream_segment"


class CaseStatus(StrEnum):
    """The outcome column of a per-case record: its name (``KEY``), its values and the column of the reason."""

    KEY = "status"
    OK = "ok"
    FAILED = "failed"
    ERROR = "error"


class StatKeys(StrEnum):
    """Keys of the statistics an adapter reports about its last call (``adapter.last_stats``)."""

    LOSS = "loss"
    AUX_LOSS = "aux_loss"
    PSEUDO_LOSS = "pseudo_loss"
    COSINE = "cosine"
    LR = "lr"
    N_PARAMS = "n_params"
    N_STEPS = "n_steps"
    RESET = "reset"
    STEP = "step"
    MEMORY_SIZE = "memory_size"
    FROM_MEMORY = "from_memory"
    WARMUP_LAMBDA = "warmup_lambda"
    MASK_FRACTION = "mask_fraction"
    NONFINITE = "nonfinite"
    NONFINITE_PART = "nonfinite_part"
    SAFEGUARD = "safeguard"
    SAFEGUARD_SIGNAL = "safeguard_signal"
    SAFEGUARD_GAP = "safeguard_gap"
    SAFEGUARD_FALLBACK = "safeguard_fallback"
    SAFE_PRIOR = "safe_prior"
    SAFE_CHOICE = "safe_choice"
    SAFE_SOURCE = "safe_source"


class Setting(StrEnum):
    """When an adapter returns to the source state.

    - ``episodic``: before every case.
    - ``domain``: whenever the domain of the incoming case changes (GraTa's published protocol).
    - ``continual``: never (VPTTA's protocol).
    """

    EPISODIC = "episodic"
    DOMAIN = "domain"
    CONTINUAL = "continual"


class NormRegime(StrEnum):
    """Which statistics the normalisation layers use while adapting and predicting.

    - ``source``: the source running statistics (plain inference).
    - ``image``: the current input's own statistics (TENT/GraTa as published).
    - ``mix``: a fixed mix ``prior * source + (1 - prior) * image``.
    - ``warmup``: VPTTA's schedule, ``lambda_t = 1 / (sqrt(t) / warm_n + 1)`` on the image statistics.
    """

    SOURCE = "source"
    IMAGE = "image"
    MIX = "mix"
    WARMUP = "warmup"


class SafePer(StrEnum):
    """How often the ``safe`` choice (:class:`~monai_tta.guards.SafeChoice`) is made.

    - ``case``: every case picks its own candidate.
    - ``domain``: one candidate per domain, from the entropies of the domain's cases so far.
    """

    CASE = "case"
    DOMAIN = "domain"


class SafeCandidate(StrEnum):
    """Labels of the ``safe`` candidates (``last_stats["safe_choice"]``): the method's own prediction, the adapted
    state with statistics weight ``p`` (``"stats_<p>"``, e.g. ``"stats_0.5"``), the source model."""

    METHOD = "method"
    STATS = "stats"
    SOURCE = "source"


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
