"""DyNA (day-night adaptation, Chen et al., arXiv 2410.13472): the night phase as MONAI training components.

The day phase of DyNA is VPTTA exactly (:class:`~monai_tta.adapters.vptta.VPTTA`: frozen model, low-frequency prompt,
memory bank, warm-up statistics), so there is no separate day adapter. The night phase is teacher-student
self-training on the images stored during the day. No DyNA code is public; every choice below marked *our default*
is a product decision of this project (see ``specs/dyna-tgma.md``), not the paper's:

- Teacher = EMA of the student after every optimizer step, momentum 0.999 (*our default*).
- Pseudo-labels = teacher sigmoid on the weakly augmented image (random horizontal/vertical flips, per sample; *our
  default*), thresholded at 0.5. The head is multi-label (one sigmoid per channel, e.g. optic disc and cup), so the
  confidence mask is defined per channel and pixel: an element is used when ``max(p, 1 - p) >= 0.9`` (*our default*),
  i.e. when that channel's binary decision is confident; the other channels of the same pixel may still be used.
- The student sees the strong view of the *same* weak (flipped) image, so no inverse mapping is needed; strong =
  :class:`~monai_tta.transforms.intensity.StrongStyle` (intensity only) by default. Loss =
  :func:`~monai_tta.losses.masked_dice_bce_loss` (BCE + Dice over the confident elements).
- BatchNorm during the night (*our default*): the student trains in ``train()`` mode, so it normalises with batch
  statistics and updates its running statistics as ordinary BN training does (momentum 0.1); the teacher runs in
  ``eval()`` mode with its running statistics. EMA updates (teacher, global student) apply to every floating-point
  entry of the state dict, parameters and BN running statistics alike; integer buffers (``num_batches_tracked``) are
  copied. The next day's model is the global student with its running statistics, which then serve as the
  "source" statistics of VPTTA's warm-up BN.
- Each night the student and the teacher start from the global student and a fresh optimizer (Adam, lr 1e-4 by
  default in the runner) is built; at the end of the night the global student is updated as
  ``global <- 0.9 * global + 0.1 * student`` (*our default* momentum 0.9).
- All randomness of an iteration (flips, strong augmentation) comes from a generator seeded from the run seed, the
  night and the iteration number, so that a night resumed from an intra-night checkpoint is identical to an
  uninterrupted one.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn

from monai_tta.adapters.stats import StatKeys
from monai_tta.data.keys import DataKeys
from monai_tta.losses import masked_dice_bce_loss
from monai_tta.transforms.intensity import StrongStyle

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = [
    "NightTrainer",
    "PackedMaskedDiceBCELoss",
    "confident_pseudo_label",
    "ema_update_",
    "random_flips",
    "derived_seed",
    "ITERATION_KEY",
    "SEED_KEY",
]

#: batch key holding the (1-based) iteration number within the night.
ITERATION_KEY = "iteration"
#: batch key holding the seed of the iteration's random generator.
SEED_KEY = "seed"


def derived_seed(*parts: Any) -> int:
    """A 63-bit seed derived deterministically from ``parts`` (e.g. run seed, night, iteration)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).hexdigest()
    return int(digest[:15], 16)


@torch.no_grad()
def ema_update_(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * source`` in place, over the whole state dict.

    Floating-point entries (parameters and BN running statistics) are averaged; other entries (e.g.
    ``num_batches_tracked``) are copied from ``source``.

    Args:
        target: the averaged model (teacher, global student).
        source: the model it follows (student); same architecture.
        momentum: weight on ``target``'s current value, in ``[0, 1]``.

    Raises:
        ValueError: if ``momentum`` is outside ``[0, 1]`` or the state dicts have different keys.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}.")
    tgt, src = target.state_dict(), source.state_dict()
    if tgt.keys() != src.keys():
        raise ValueError("target and source have different state-dict keys.")
    for key, value in tgt.items():
        other = src[key].to(value.device)
        if value.is_floating_point():
            value.mul_(momentum).add_(other.to(value.dtype), alpha=1.0 - momentum)
        else:
            value.copy_(other)


def confident_pseudo_label(
    prob: torch.Tensor, threshold: float = 0.5, confidence: float = 0.9
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard pseudo-labels and the confidence mask of multi-label sigmoid probabilities.

    ``label = prob >= threshold`` and ``mask = max(prob, 1 - prob) >= confidence``, both per channel and element
    (each channel is its own binary decision).

    Args:
        prob: sigmoid probabilities ``(B, C, *spatial)``.
        threshold: binarisation threshold (0.5).
        confidence: minimum ``max(p, 1 - p)`` of a used element (0.9; 0.5 uses every element).

    Returns:
        ``label`` and ``mask`` as float tensors of ``prob``'s shape.

    Raises:
        ValueError: if ``confidence`` is outside ``[0.5, 1]`` or ``threshold`` outside ``(0, 1)``.
    """
    if not 0.5 <= confidence <= 1.0:
        raise ValueError(f"confidence must be in [0.5, 1], got {confidence}.")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}.")
    label = (prob >= threshold).to(prob.dtype)
    mask = (torch.maximum(prob, 1.0 - prob) >= confidence).to(prob.dtype)
    return label, mask


def random_flips(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The weak view: each sample is flipped along each of its last two axes with probability 1/2.

    Args:
        x: ``(B, C, *spatial)`` with at least two spatial axes.
        generator: random generator.
    """
    if x.dim() < 4:
        raise ValueError(f"random_flips expects (B, C, H, W[, D]), got shape {tuple(x.shape)}.")
    coins = torch.rand(x.shape[0], 2, generator=generator) < 0.5
    out = []
    for sample, (flip_h, flip_w) in zip(x, coins.tolist()):
        dims = [d for d, on in ((-2, flip_h), (-1, flip_w)) if on]
        out.append(sample.flip(dims) if dims else sample)
    return torch.stack(out)


def _accepts_generator(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "generator" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class PackedMaskedDiceBCELoss(nn.Module):
    """:func:`~monai_tta.losses.masked_dice_bce_loss` with the label and the mask packed into one target.

    The target has ``2 C`` channels: the ``C`` label channels then the ``C`` mask channels (how
    :class:`NightTrainer` passes both through MONAI's ``loss_function(pred, label)`` call).

    Args:
        smooth: Dice smoothing constant.
    """

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        if packed.shape[1] != 2 * logits.shape[1]:
            raise ValueError(f"packed target needs {2 * logits.shape[1]} channels, got {packed.shape[1]}.")
        label, mask = packed.split(logits.shape[1], dim=1)
        return masked_dice_bce_loss(logits, label, mask, self.smooth)


class NightTrainer(SupervisedTrainer):
    """One DyNA night: a MONAI ``SupervisedTrainer`` whose labels are the teacher's confident pseudo-labels.

    Each iteration: weak view (random flips) -> teacher (``eval()``, no gradient) -> sigmoid -> hard label and
    confidence mask -> strong view of the weak image -> the standard supervised step of ``SupervisedTrainer``
    (student in ``train()`` mode, masked BCE + Dice, optimizer step) -> teacher EMA update. The batches are dicts
    with ``"image"`` ``(B, C, *spatial)``, and optionally ``"seed"`` (seed of the iteration's random generator) and
    ``"iteration"``. ``engine.state.output`` also holds ``"mask_fraction"``, the fraction of confident elements.

    Args:
        device: device of the run.
        train_data_loader: the night's batches (e.g. a ``DataLoader`` with ``batch_size=None`` over prepared batches).
        network: the student.
        teacher: the teacher (same architecture), updated in place.
        optimizer: optimizer over the student's parameters.
        teacher_momentum: EMA momentum of the teacher (0.999, *our default*).
        threshold: pseudo-label threshold (0.5).
        confidence: confidence threshold ``tau`` on ``max(p, 1 - p)`` (0.9, *our default*).
        strong_augment: strong view; default :class:`StrongStyle` (drawing from the iteration's generator). A
            callable accepting ``generator=`` receives it.
        weak_augment: weak view ``f(x, generator) -> x``; default :func:`random_flips`.
        max_epochs: passes over ``train_data_loader`` (1 when the loader already holds the whole night's schedule).
        seed: seed of the generator of batches that carry no ``"seed"``.
        kwargs: other :class:`monai.engines.SupervisedTrainer` arguments (``decollate`` defaults to ``False``).

    Raises:
        ValueError: for a momentum outside ``[0, 1]`` or invalid thresholds.
    """

    def __init__(
        self,
        device: torch.device | str,
        train_data_loader: Any,
        network: nn.Module,
        teacher: nn.Module,
        optimizer: torch.optim.Optimizer,
        teacher_momentum: float = 0.999,
        threshold: float = 0.5,
        confidence: float = 0.9,
        strong_augment: Callable[..., torch.Tensor] | None = None,
        weak_augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        max_epochs: int = 1,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= teacher_momentum <= 1.0:
            raise ValueError(f"teacher_momentum must be in [0, 1], got {teacher_momentum}.")
        confident_pseudo_label(torch.zeros(1), threshold, confidence)  # validates both
        kwargs.setdefault("decollate", False)
        kwargs.setdefault("loss_function", PackedMaskedDiceBCELoss())
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            **kwargs,
        )
        self.teacher = teacher
        self.teacher_momentum = teacher_momentum
        self.threshold, self.confidence = threshold, confidence
        self.strong_augment = strong_augment if strong_augment is not None else StrongStyle()
        self.weak_augment = weak_augment if weak_augment is not None else random_flips
        self._strong_takes_generator = _accepts_generator(self.strong_augment)
        self.generator = torch.Generator().manual_seed(seed)
        self.add_event_handler(Events.ITERATION_COMPLETED, self._update_teacher)

    def _strong(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if isinstance(self.strong_augment, StrongStyle):
            return self.strong_augment(x.cpu(), generator=generator).to(x.device)
        if self._strong_takes_generator:
            return self.strong_augment(x, generator=generator)
        return self.strong_augment(x)

    @torch.no_grad()
    def pseudo_label(self, weak: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher's hard pseudo-label and confidence mask for the weak view."""
        self.teacher.eval()
        prob = torch.sigmoid(self.teacher(weak))
        return confident_pseudo_label(prob, self.threshold, self.confidence)

    def _iteration(self, engine: NightTrainer, batchdata: dict[str, Any]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        generator = engine.generator
        if SEED_KEY in batchdata:
            generator = torch.Generator().manual_seed(int(batchdata[SEED_KEY]))
        image = torch.as_tensor(batchdata[DataKeys.IMAGE]).to(engine.state.device, dtype=torch.float32)
        weak = engine.weak_augment(image.cpu(), generator).to(image.device)
        label, mask = engine.pseudo_label(weak)
        strong = engine._strong(weak, generator)
        packed = torch.cat([label, mask], dim=1)
        output = super()._iteration(engine, {DataKeys.IMAGE: strong, DataKeys.LABEL: packed})
        output[StatKeys.MASK_FRACTION] = float(mask.mean())
        return output

    def _update_teacher(self, engine: NightTrainer) -> None:
        ema_update_(engine.teacher, engine.network, engine.teacher_momentum)
