"""Names of the statistics an adapter (and its guards) report about the last call (``adapter.last_stats``)."""

from __future__ import annotations

from monai.utils import StrEnum

__all__ = ["StatKeys"]


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
    SAFE_SIGNAL = "safe_signal"
    SAFE_SCORE = "safe_score"
    SAFE_STEP = "safe_step"
    SAFE_ANCHOR = "safe_anchor"
    SAFE_ANCHOR_MARGIN = "safe_anchor_margin"
