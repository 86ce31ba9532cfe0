"""DyNA's day/night schedule: VPTTA by day, self-training by night, with a crash-safe store and exact resume.

The layout of a run's output folder is in :mod:`monai_tta.adapters.dyna.layout`. Every file is written to a
temporary name in the same folder, flushed and fsync'ed, then moved into place with ``os.replace``, so a reader only
ever sees a complete old or a complete new version. A day image becomes visible only once the manifest that lists it
has been replaced, so a partially written image is never read. The store and the batches a night trains on are in
:mod:`monai_tta.adapters.dyna.store`; the report's tables and plot in :mod:`monai_tta.adapters.dyna.report`.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.metrics import compute_dice
from monai.utils import CommonKeys, IgniteInfo, look_up_option, min_version, optional_import
from torch import nn
from torch.utils.data import DataLoader

from monai_tta.adapters.base import Adapter, build_optimizer
from monai_tta.adapters.dyna.keys import DayNightKeys
from monai_tta.adapters.dyna.layout import CASES_NAME, CHECKPOINT_NAME, REPORT_NAME, STORE_NAME
from monai_tta.adapters.dyna.night import NightTrainer, derived_seed, ema_update_
from monai_tta.adapters.dyna.report import anchor_counts, build_daynight_report, guard_columns, warn_anchored
from monai_tta.adapters.dyna.store import DayImageStore, NightBatches, night_schedule, plain_tensor
from monai_tta.adapters.stats import StatKeys
from monai_tta.adapters.vptta.adapter import VPTTA
from monai_tta.data.checks import InvalidCaseError, case_name
from monai_tta.data.guarded import FAILURE_KEY, is_failure
from monai_tta.data.keys import CaseStatus, DataKeys
from monai_tta.distributed import get_rank, get_world_size
from monai_tta.guards import SourceAnchor
from monai_tta.io import atomic_save, atomic_write_json
from monai_tta.norms import norm_layers
from monai_tta.reports.tables import write_case_csv

K = DayNightKeys  # short name of the keys in this module

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
logger = logging.getLogger(__name__)

#: checkpoint fields of a night in progress, as they are when no night is running.
_NO_NIGHT_STATE = {
    "night_iteration": 0,
    "night_loss_sum": 0.0,
    "night_mask_sum": 0.0,
    "student": None,
    "teacher": None,
    "optimizer": None,
}

__all__ = ["DayNightRunner", "case_dice"]

_NIGHT_DATA = ("day", "all")
#: held-out cases: a sequence, ``{group: cases}`` or ``None``.
_HeldOut = Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]] | None
_PHASE_DAY, _PHASE_NIGHT, _PHASE_DONE = "day", "night", "done"

#: report fields present only when the stream's cases carry a group (``group_key``, e.g. the domain) or when the
#: held-out cases are given as ``{group: cases}``: per-group Dice, keyed by group name.


def case_dice(pred: torch.Tensor, label: torch.Tensor) -> float:
    """Mean over channels of the Dice of one binarised case ``(1, C, *spatial)`` (empty vs empty scores 1)."""
    dice = compute_dice(pred.float(), label.float(), include_background=True, ignore_empty=False)
    return float(dice.mean())


class DayNightRunner:
    """Run DyNA over a stream: days of VPTTA on ``images_per_day`` images, each followed by a night of self-training.

    By day the day adapter (VPTTA by default) adapts and predicts each image with the day model, and every image and
    its binarised prediction (sigmoid >= 0.5) are put in the :class:`DayImageStore`. By night a
    :class:`~monai_tta.adapters.dyna.night.NightTrainer` trains a student (teacher = EMA of the student) on the
    stored images of that day (``night_data="day"``) or of all days so far (``"all"``); then the global student is
    updated as an EMA of the night's student, and becomes the next day's model (parameters and BN running
    statistics). The last day is followed by a night too. See :mod:`monai_tta.adapters.dyna.night` for the night's
    defaults (ours: DyNA has no public code).

    A day is the next ``images_per_day`` good cases of the stream. A bad case, either a failure record of a
    :class:`~monai_tta.data.GuardedDataset` (a file missing, unreadable, corrupt or failing
    :class:`~monai_tta.transforms.validation.ValidateCased`) or an image the day adapter rejects with
    :class:`~monai_tta.data.checks.InvalidCaseError` (raised before any of its state changes), gets a ``failed`` row
    with its reason in ``cases.csv``, is not stored, does not count toward its day and never reaches a night: the
    day adapter, the students and the teacher are bit for bit those of a run without it (ours: the paper has no bad
    input). Trailing bad cases after the last good one end the stream without a day of their own.

    Checkpoints hold the global student, the night's student, teacher and optimizer, the day and night counters, the
    position in the stream and the day adapter's state (prompt, Adam state, memory bank, warm-up counter). Calling
    :meth:`run` again with the same output folder resumes: an interrupted night continues from its last intra-night
    checkpoint (or its start), with the same batches and random draws as an uninterrupted run; an interrupted day is
    redone from its first image with the adapter state saved at its start (the same predictions; its stored images
    are rewritten). The day adapter is continual across days by default (our default: its bank, Adam state and
    warm-up counter persist; ``reset_each_day=True`` resets it at the start of each day).

    Args:
        network: the source network (plain BatchNorm layers, not yet converted by an adapter); it is the day model
            and is updated in place after each night.
        output_dir: folder of the run (store, checkpoint, report).
        day_adapter: the day adapter; default ``VPTTA()``. It must provide ``state_dict(network)`` and
            ``load_state_dict(network, state)``.
        images_per_day: number of stream images per day.
        night_epochs: passes over the night's images.
        night_iterations: exact number of night iterations instead of ``night_epochs``.
        night_batch_size: images per night batch.
        night_optimizer: ``"adam"`` or ``"sgd"`` (a fresh optimizer each night).
        night_lr: learning rate of the night optimizer.
        teacher_momentum: teacher EMA momentum (0.999).
        global_momentum: global-student EMA momentum at the end of each night (0.9).
        threshold: pseudo-label threshold (0.5).
        confidence: confidence threshold on ``max(p, 1 - p)`` (0.9).
        night_data: ``"day"`` (the images of that day) or ``"all"`` (every image stored so far).
        checkpoint_interval: write an intra-night checkpoint every this many night iterations (0: none).
        reset_each_day: reset the day adapter at the start of each day.
        source_anchor: after the day adapter's ``safe``, compare its prediction with the *original* source model's
            (:class:`~monai_tta.guards.SourceAnchor`) on every day whose model differs from it (after a night):
            ``safe`` and the safeguard take the day model, the global student, as their source, and the anchor keeps
            the run from falling below the model it started from (ours, issue 18). ``None``: on when the day
            adapter has ``safe``; ``True`` requires it.
        strong_augment: the night's strong augmentation (default ``StrongStyle``).
        seed: seed of every random draw of the nights.
        device: device of the run (default: that of the network's parameters).
        image_key: key of the image in the stream's items (unbatched ``(C, *spatial)``).
        label_key: key of the optional label (binary, ``(C_out, *spatial)``) used for the day Dice.
        group_key: key of the optional group of a stream case (e.g. its domain); when cases carry it, each day
            record also holds the day Dice per group (``None``: no grouping).
        callback: called as ``callback(event, info)`` after each stored image and each checkpoint (events in
            :class:`~monai_tta.adapters.dyna.keys.DayNightKeys`); an exception raised there interrupts the run like a
            crash.

    Raises:
        ValueError: for invalid counts or options, a network whose norms were already converted, or
            ``source_anchor=True`` with a day adapter without ``safe``.
        TypeError: if the day adapter cannot save its state, or ``source_anchor`` is not a bool or ``None``.
    """

    def __init__(
        self,
        network: nn.Module,
        output_dir: str | os.PathLike,
        day_adapter: Adapter | None = None,
        images_per_day: int = 100,
        night_epochs: int = 1,
        night_iterations: int | None = None,
        night_batch_size: int = 4,
        night_optimizer: str = "adam",
        night_lr: float = 1e-4,
        teacher_momentum: float = 0.999,
        global_momentum: float = 0.9,
        threshold: float = 0.5,
        confidence: float = 0.9,
        night_data: str = "day",
        checkpoint_interval: int = 0,
        reset_each_day: bool = False,
        strong_augment: Callable[..., torch.Tensor] | None = None,
        seed: int = 0,
        device: str | torch.device | None = None,
        image_key: str = DataKeys.IMAGE,
        label_key: str = DataKeys.LABEL,
        group_key: str | None = DataKeys.DOMAIN,
        callback: Callable[[str, dict[str, Any]], None] | None = None,
        source_anchor: bool | None = None,
    ) -> None:
        if images_per_day < 1 or night_epochs < 0 or night_batch_size < 1 or checkpoint_interval < 0:
            raise ValueError(
                "images_per_day and night_batch_size must be >= 1, night_epochs and checkpoint_interval >= 0; got "
                f"{images_per_day}, {night_batch_size}, {night_epochs}, {checkpoint_interval}."
            )
        if night_iterations is not None and night_iterations < 0:
            raise ValueError(f"night_iterations must be >= 0, got {night_iterations}.")
        if not 0.0 <= global_momentum <= 1.0:
            raise ValueError(f"global_momentum must be in [0, 1], got {global_momentum}.")
        if norm_layers(network):
            raise ValueError("network already has adaptive norms: pass a freshly built (or loaded) source network.")
        self.day_adapter = day_adapter if day_adapter is not None else VPTTA()
        if not (hasattr(self.day_adapter, "state_dict") and hasattr(self.day_adapter, "load_state_dict")):
            raise TypeError("day_adapter must provide state_dict(network) and load_state_dict(network, state).")
        self.network = network
        self.output_dir = Path(output_dir)
        self.images_per_day, self.night_epochs, self.night_iterations = images_per_day, night_epochs, night_iterations
        self.night_batch_size, self.night_lr = night_batch_size, night_lr
        self.night_optimizer = look_up_option(night_optimizer.lower(), ("adam", "sgd"))
        self.teacher_momentum, self.global_momentum = teacher_momentum, global_momentum
        self.threshold, self.confidence = threshold, confidence
        self.night_data = look_up_option(night_data, _NIGHT_DATA)
        self.checkpoint_interval, self.reset_each_day = checkpoint_interval, reset_each_day
        self.strong_augment, self.seed = strong_augment, seed
        param = next(network.parameters(), None)
        self.device = torch.device(device) if device is not None else (param.device if param is not None else "cpu")
        self.image_key, self.label_key, self.callback = image_key, label_key, callback
        self.group_key = group_key
        self.global_student = copy.deepcopy(network)
        safe = getattr(self.day_adapter, "safe", None)
        if source_anchor is not None and not isinstance(source_anchor, bool):
            raise TypeError(
                f"source_anchor must be True, False or None, got {source_anchor!r} (a string such as the command "
                "line's 'false' is read by monai_tta.zoo.as_flag, as the DyNA bundle does)."
            )
        if source_anchor and safe is None:
            raise ValueError("source_anchor=True needs a day adapter with safe on (e.g. VPTTA(safe='case')).")
        use_anchor = safe is not None if source_anchor is None else source_anchor
        activation = getattr(self.day_adapter, "activation", "sigmoid")
        self.anchor = SourceAnchor(network, safe, activation) if use_anchor else None
        self.store: DayImageStore | None = None
        self.checkpoint_path = self.output_dir / CHECKPOINT_NAME
        self.report_path = self.output_dir / REPORT_NAME

    # ----------------------------------------------------------------- helpers
    def _config(self, n_stream: int) -> dict[str, Any]:
        config = {
            "images_per_day": self.images_per_day,
            "n_stream": n_stream,
            "night_epochs": self.night_epochs,
            "night_iterations": self.night_iterations,
            "night_batch_size": self.night_batch_size,
            "night_data": str(self.night_data),
            "seed": self.seed,
        }
        if get_world_size() > 1:  # a rank's block depends on the number of ranks: another count is another stream
            config["rank"], config["world_size"] = get_rank(), get_world_size()
        return config

    def _emit(self, event: str, **info: Any) -> None:
        if self.callback is not None:
            self.callback(str(event), info)

    def _save(self, ckpt: dict[str, Any]) -> None:
        atomic_save(ckpt, self.checkpoint_path)

    def _batch(self, value: Any) -> torch.Tensor:
        return plain_tensor(value).float().unsqueeze(0).to(self.device)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, cases: Sequence[Mapping[str, Any]]) -> float | None:
        """Mean Dice of ``model`` (``eval()`` mode, its running statistics, no adaptation) over labelled ``cases``.

        Failure records (bad cases of a :class:`~monai_tta.data.GuardedDataset`) are left out; the report lists them.
        """
        scores = []
        model.eval()
        for case in cases:
            if is_failure(case):
                continue
            logits = model(self._batch(case[self.image_key]))
            pred = torch.sigmoid(logits) >= 0.5
            scores.append(case_dice(pred, self._batch(case[self.label_key])))
        return float(sum(scores) / len(scores)) if scores else None

    def evaluate_heldout(self, model: nn.Module, heldout: _HeldOut) -> tuple[float | None, dict[str, float] | None]:
        """Mean Dice of ``model`` on the held-out cases, and per group when they are given as ``{group: cases}``.

        For groups, the mean is the mean over the groups' mean Dice (each group weighs the same).

        Args:
            model: the model to score (``eval()`` mode, its running statistics, no adaptation).
            heldout: labelled cases, as a sequence or as ``{group: cases}``, or ``None``.

        Returns:
            ``(mean, per_group)``; ``per_group`` is ``None`` for a plain sequence, both are ``None`` without cases.
        """
        if not heldout:
            return None, None
        if not isinstance(heldout, Mapping):
            return self.evaluate(model, heldout), None
        per_group = {str(g): self.evaluate(model, cases) for g, cases in heldout.items()}
        per_group = {g: v for g, v in per_group.items() if v is not None}
        return (float(sum(per_group.values()) / len(per_group)) if per_group else None), per_group

    def _fresh_checkpoint(self, n_stream: int, heldout: _HeldOut) -> dict[str, Any]:
        initial, initial_groups = self.evaluate_heldout(self.global_student, heldout)
        return {
            K.CONFIG.value: self._config(n_stream),
            "phase": _PHASE_DAY,
            K.DAY.value: 0,
            "position": 0,
            "night_iteration": 0,
            "night_loss_sum": 0.0,
            "night_mask_sum": 0.0,
            "global_student": copy.deepcopy(self.global_student.state_dict()),
            "student": None,
            "teacher": None,
            "optimizer": None,
            "day_adapter": None,
            "records": [],
            K.CASES.value: [],
            K.INITIAL_HELDOUT_DICE.value: initial,
            K.INITIAL_HELDOUT_DICE_PER_GROUP.value: initial_groups,
            "source": None if self.anchor is None else self.anchor.state_dict(),
        }

    # ----------------------------------------------------------------- the run
    def run(self, stream: Sequence[Mapping[str, Any]], heldout: _HeldOut = None) -> dict[str, Any]:
        """Run (or resume) the day/night schedule over ``stream`` and return the report (also in ``report.json``).

        Args:
            stream: indexable sequence of cases (dicts with an unbatched image and optionally a label), in order, e.g.
                a :class:`~monai_tta.data.GuardedDataset` over a list (whose bad cases are failure records).
            heldout: labelled cases on which the global student is evaluated before the first day and after each
                night, as a sequence or as ``{group: cases}`` (then also per group, e.g. per target domain;
                optional).

        Raises:
            ValueError: if the output folder holds a run with a different configuration.
        """
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for tmp in self.output_dir.glob(".*.tmp"):  # left by a kill during a checkpoint or report write
            tmp.unlink()
        self.store = DayImageStore(self.output_dir / STORE_NAME)
        n = len(stream)
        if self.checkpoint_path.exists():
            ckpt = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
            if ckpt[K.CONFIG.value] != self._config(n):
                raise ValueError(
                    f"{self.output_dir} holds a run with config {ckpt[K.CONFIG.value]}, not {self._config(n)}."
                )
        else:
            ckpt = self._fresh_checkpoint(n, heldout)
        if self.anchor is not None and ckpt.get("source") is not None:  # the model the run started from
            self.anchor.load_state_dict(ckpt["source"])
        self.global_student.load_state_dict(ckpt["global_student"])
        self.network.load_state_dict(ckpt["global_student"])
        if ckpt["day_adapter"] is not None:
            self.day_adapter.load_state_dict(self.network, ckpt["day_adapter"])
        else:  # first day (again): the adapter starts from its initial state even if this object ran before
            self.day_adapter.reset(self.network)
        while ckpt["phase"] != _PHASE_DONE:
            if ckpt["phase"] == _PHASE_DAY and ckpt["position"] >= n:
                ckpt["phase"] = _PHASE_DONE
            elif ckpt["phase"] == _PHASE_DAY:
                self._day(ckpt, stream)
            else:
                self._night(ckpt, heldout)
        report = build_daynight_report(ckpt, n, heldout)
        atomic_write_json(report, self.report_path)
        self._save(ckpt)
        self._emit(K.DONE_EVENT, report=report)
        return report

    def _day(self, ckpt: dict[str, Any], stream: Sequence[Mapping[str, Any]]) -> None:
        day = ckpt[K.DAY.value]
        start = end = int(ckpt["position"])
        if self.reset_each_day:
            self.day_adapter.reset(self.network)
        scores = []
        group_scores: dict[str, list[float]] = {}
        rows: list[dict[str, Any]] = []
        n_good = 0
        anchor = self.anchor if self.anchor is not None and self.anchor.differs_from(self.global_student) else None
        while end < len(stream) and n_good < self.images_per_day:
            i, end = end, end + 1
            case = stream[i]
            row = {
                DataKeys.CASE_ID.value: case_name(case, default=str(i)),
                DataKeys.DOMAIN.value: str(case.get(DataKeys.DOMAIN, "all")),
                K.DAY.value: day,
            }
            rows.append(row)
            try:
                if is_failure(case):
                    raise InvalidCaseError(row[DataKeys.CASE_ID], case[FAILURE_KEY])
                image = plain_tensor(case[self.image_key]).float()
                x = self._batch(image)
                logits = self.day_adapter(x, self.network)  # checks the image before adapting
            except InvalidCaseError as e:
                logger.warning(f"case {row[DataKeys.CASE_ID]!r} skipped: {e.reason}")
                row.update({CaseStatus.KEY.value: CaseStatus.FAILED.value, CaseStatus.ERROR.value: e.reason})
                continue
            row[CaseStatus.KEY.value] = CaseStatus.OK.value
            stats = dict(getattr(self.day_adapter, "last_stats", None) or {})
            if anchor is not None:  # the day model is not the source model any more
                logits, record = anchor.choose(x, plain_tensor(logits), stats)
                stats.update(record)
            row.update(guard_columns(stats))
            n_good += 1
            pred = torch.sigmoid(plain_tensor(logits)) >= 0.5
            self.store.put(i, image, pred[0].to(torch.uint8), day=day)
            if self.label_key in case and case[self.label_key] is not None:
                scores.append(case_dice(pred, self._batch(case[self.label_key])))
                row[K.DAY_DICE.value] = scores[-1]
                if self.group_key is not None and case.get(self.group_key) is not None:
                    group_scores.setdefault(str(case[self.group_key]), []).append(scores[-1])
            self._emit(K.IMAGE_EVENT, day=day, index=i)
        cases = [*ckpt.get(K.CASES.value, []), *rows]
        if n_good == 0:  # only bad cases up to the end of the stream: no day, no night
            ckpt.update(position=end, **{K.CASES.value: cases})
            self._save(ckpt)
            write_case_csv(self.output_dir / CASES_NAME, cases)
            return
        record = {
            K.DAY.value: day,
            K.START.value: start,
            K.END.value: end,
            K.N_IMAGES.value: n_good,
            K.N_FAILED.value: len(rows) - n_good,
            K.DAY_DICE.value: float(sum(scores) / len(scores)) if scores else None,
            "n_labelled": len(scores),
        }
        if group_scores:
            record[K.DAY_DICE_PER_GROUP.value] = {g: float(sum(v) / len(v)) for g, v in group_scores.items()}
            record[K.N_LABELLED_PER_GROUP.value] = {g: len(v) for g, v in group_scores.items()}
        if anchor is not None:
            record[K.SOURCE_ANCHOR_PER_GROUP.value] = anchor_counts(rows)
            warn_anchored(day, record[K.SOURCE_ANCHOR_PER_GROUP.value])
        ckpt.update(
            phase=_PHASE_NIGHT,
            position=end,
            **_NO_NIGHT_STATE,
            day_adapter=self.day_adapter.state_dict(self.network),
            records=[*ckpt["records"], record],
            **{K.CASES.value: cases},
        )
        self._save(ckpt)
        write_case_csv(self.output_dir / CASES_NAME, cases)
        self._emit(K.DAY_EVENT, day=day, position=end)

    def _night(self, ckpt: dict[str, Any], heldout: _HeldOut) -> None:
        day = ckpt[K.DAY.value]
        indices = self.store.indices(day=day) if self.night_data == "day" else self.store.indices()
        night_seed = derived_seed(self.seed, "night", day)
        schedule = night_schedule(
            indices, self.night_batch_size, self.night_epochs, self.night_iterations, seed=night_seed
        )
        student = copy.deepcopy(self.global_student).to(self.device)
        teacher = copy.deepcopy(self.global_student).to(self.device)
        optimizer = build_optimizer(list(student.parameters()), self.night_optimizer, self.night_lr)
        done = int(ckpt["night_iteration"])
        if done > 0:
            student.load_state_dict(ckpt["student"])
            teacher.load_state_dict(ckpt["teacher"])
            optimizer.load_state_dict(ckpt["optimizer"])
        if done < len(schedule):
            loader = DataLoader(NightBatches(self.store, schedule, done, night_seed), batch_size=None, shuffle=False)
            trainer = NightTrainer(
                device=self.device,
                train_data_loader=loader,
                network=student,
                teacher=teacher,
                optimizer=optimizer,
                teacher_momentum=self.teacher_momentum,
                threshold=self.threshold,
                confidence=self.confidence,
                strong_augment=self.strong_augment,
                seed=night_seed,
            )

            def _after_iteration(engine: NightTrainer) -> None:
                k = done + engine.state.iteration
                ckpt["night_loss_sum"] += float(engine.state.output[CommonKeys.LOSS].detach())
                ckpt["night_mask_sum"] += float(engine.state.output[StatKeys.MASK_FRACTION])
                ckpt["night_iteration"] = k
                if self.checkpoint_interval and k % self.checkpoint_interval == 0 and k < len(schedule):
                    ckpt.update(
                        student=copy.deepcopy(student.state_dict()),
                        teacher=copy.deepcopy(teacher.state_dict()),
                        optimizer=copy.deepcopy(optimizer.state_dict()),
                    )
                    self._save(ckpt)
                    self._emit(K.NIGHT_CHECKPOINT_EVENT, day=day, iteration=k)

            trainer.add_event_handler(Events.ITERATION_COMPLETED, _after_iteration)
            trainer.run()
        ema_update_(self.global_student, student, self.global_momentum)
        self.network.load_state_dict(self.global_student.state_dict())
        total = len(schedule)
        record = dict(ckpt["records"][-1])
        heldout_dice, heldout_groups = self.evaluate_heldout(self.global_student, heldout)
        record.update(
            {
                K.NIGHT_ITERATIONS.value: total,
                K.NIGHT_LOSS.value: ckpt["night_loss_sum"] / total if total else None,
                StatKeys.MASK_FRACTION.value: ckpt["night_mask_sum"] / total if total else None,
                K.HELDOUT_DICE.value: heldout_dice,
            }
        )
        if heldout_groups is not None:
            record[K.HELDOUT_DICE_PER_GROUP.value] = heldout_groups
        ckpt.update(
            phase=_PHASE_DAY,
            day=day + 1,
            **_NO_NIGHT_STATE,
            global_student=copy.deepcopy(self.global_student.state_dict()),
            records=[*ckpt["records"][:-1], record],
        )
        self._save(ckpt)
        self._emit(K.NIGHT_EVENT, day=day)
