"""TGMA (Yang, Liu and Yuan, MICCAI 2023): transferability-guided multi-source model adaptation, source-free.

TGMA is not a per-case ``Inferer`` like the methods of :mod:`monai_tta.adapters`: it scores several source models on a
whole unlabelled target set, corrects pseudo-labels with those scores, then trains a target model offline. So it has
its own package, one concept per module: the metric (:mod:`.lftm`), the matrices and the selection
(:mod:`.transferability`), the adaptation model, loss and trainer (:mod:`.adaptation`), the resumable run
(:mod:`.runner`), the guard against ending below the untouched sources (:mod:`.guarded`), its report
(:mod:`.report`) and the leave-one-site-out loop (:mod:`.loso`).
"""

from __future__ import annotations

from monai_tta.guards.source import probability_entropy  # re-exported: the served guard's entropy
from monai_tta.tgma.adaptation import EnsembleDiceLoss, WeightedEnsemble, tgma_trainer
from monai_tta.tgma.guarded import GuardedEnsemble, MixedBatchNorm, TgmaServe
from monai_tta.tgma.lftm import (
    attention_mask,
    foreground,
    hard_foreground,
    lftm,
    lftm_terms,
    perturb_unattended,
    soft_dice_from_terms,
    soft_dice_terms,
)
from monai_tta.tgma.loso import leave_one_site_out
from monai_tta.tgma.report import (
    GUARDED,
    evaluate_tgma,
    foreground_label,
    spearman,
    write_loso_summary,
    write_tgma_report,
)
from monai_tta.tgma.runner import TGMARunner
from monai_tta.tgma.serving import SliceWiseNetwork, save_target_model
from monai_tta.tgma.transferability import (
    ModelSelection,
    corrected_pseudo_label,
    domain_transferability,
    instance_weights,
    pool_by_case,
    select_models,
    weighted_ensemble,
)

__all__ = [
    "EnsembleDiceLoss",
    "GUARDED",
    "GuardedEnsemble",
    "MixedBatchNorm",
    "ModelSelection",
    "SliceWiseNetwork",
    "TGMARunner",
    "TgmaServe",
    "WeightedEnsemble",
    "attention_mask",
    "corrected_pseudo_label",
    "domain_transferability",
    "evaluate_tgma",
    "foreground_label",
    "foreground",
    "hard_foreground",
    "instance_weights",
    "leave_one_site_out",
    "lftm",
    "lftm_terms",
    "perturb_unattended",
    "probability_entropy",
    "save_target_model",
    "pool_by_case",
    "select_models",
    "soft_dice_from_terms",
    "soft_dice_terms",
    "spearman",
    "tgma_trainer",
    "weighted_ensemble",
    "write_loso_summary",
    "write_tgma_report",
]
