"""VPTTA: visual prompt test-time adaptation, its Fourier prompt and its memory bank."""

from __future__ import annotations

from monai_tta.adapters.vptta.adapter import VPTTA
from monai_tta.adapters.vptta.memory import PromptMemory
from monai_tta.adapters.vptta.prompt import WINDOW_MODES, FourierPrompt, prompt_size_for

__all__ = [
    "VPTTA",
    "PromptMemory",
    "FourierPrompt",
    "WINDOW_MODES",
    "prompt_size_for",
]
