"""The TGMA run, resumable: transferability (LFTM, ITM, DTM, selection, pseudo-labels), adaptation, predictions.

Layout of a run's output folder (every file replaced atomically, :mod:`monai_tta.io`)::

    <output_dir>/transferability.pt  ITM, DTM, selection, corrected pseudo-labels and the sources' predictions
    <output_dir>/checkpoint.pt       adaptation state (members, optimizer, iteration, pseudo-labels), replaced at each
                                     epoch end and every ``checkpoint_interval`` iterations
    <output_dir>/target_model.pt     the adapted target model (the weighted ensemble's state dict) and its selection

Calling :meth:`TGMARunner.run` again with the same output folder and options resumes from the last file written and
ends with the same result as an uninterrupted run: the batches of every epoch come from a schedule seeded by the run's
seed (:func:`~monai_tta.adapters.dyna.night_schedule`), the LFTM noise of input ``i`` from a generator seeded by
``(seed, i)``, and the adaptation has no other randomness. The source networks are only read: the adapted models are
copies, and nothing is ever written to the sources' checkpoints.

Our choices where the paper is silent are listed in :mod:`monai_tta.tgma.lftm`, :mod:`.transferability` and
:mod:`.adaptation`; here: the refreshed pseudo-labels (``refresh=r``: after every ``r`` epochs the ITM and the
corrected pseudo-labels are recomputed with the adapted main and auxiliary models in place of their sources; the
selection and the weights stay), and the ITM level (``"case"``: one row per case, the soft-Dice sums pooled over the
case's inputs, e.g. the slices of a volume; ``"slice"``: one row per input), and the guard (``safe``, on by default,
issue 18: each case, all its inputs in one call, is predicted by :class:`~monai_tta.tgma.guarded.GuardedEnsemble`,
the adapted target model unless TGMA before adaptation, the untouched selected sources with the same weights, is as
good by a label-free signal; ``guarded_preds`` and the per-case record ``guard``; the adapted model itself, its files
and ``adapted_preds`` are the same with the guard on or off).

Under ``torchrun`` (several ranks in a process group, :mod:`monai_tta.data_parallel`) the adaptation is data-parallel
training: the ensemble is wrapped in ``DistributedDataParallel``, each global batch of ``N x batch_size`` inputs (the
single-process schedule with that batch, same epochs and seeds) is dealt over the ``N`` ranks, and the Dice terms are
summed across them, so the gradient is that of the global batch; BatchNorm normalises each rank's part on its own.
An epoch's last batch with fewer inputs than ranks is filled up by repeating its inputs.
Rank 0 alone computes the transferability (and the refreshed pseudo-labels) and hands them to the other ranks, and it
alone writes the files; every rank reads the run's files through rank 0, so a rerun of the same command (with the
same number of ranks, part of the run's options) resumes as one process does. Every rank returns the same results.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor
from monai.utils import CommonKeys, IgniteInfo, look_up_option, min_version, optional_import
from torch import nn
from torch.utils.data import DataLoader, Dataset

from monai_tta.adapters.base import build_optimizer
from monai_tta.adapters.dyna.night import derived_seed
from monai_tta.adapters.dyna.store import night_schedule
from monai_tta.data.keys import DataKeys
from monai_tta.data_parallel import broadcast_object, fill_global_batches, rank_batch, wrap_ddp
from monai_tta.distributed import get_world_size, is_main_process
from monai_tta.flags import as_flag
from monai_tta.io import atomic_save
from monai_tta.losses import activate
from monai_tta.tgma.adaptation import WeightedEnsemble, tgma_trainer
from monai_tta.tgma.guarded import GuardedEnsemble, TgmaServe
from monai_tta.tgma.lftm import ACTIVATIONS, PERTURBATIONS, hard_foreground, lftm_terms
from monai_tta.tgma.transferability import (
    ModelSelection,
    corrected_pseudo_label,
    domain_transferability,
    pool_by_case,
    select_models,
    weighted_ensemble,
)

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["TGMARunner", "TRANSFERABILITY_NAME", "CHECKPOINT_NAME", "TARGET_MODEL_NAME"]

TRANSFERABILITY_NAME = "transferability.pt"
CHECKPOINT_NAME = "checkpoint.pt"
TARGET_MODEL_NAME = "target_model.pt"
_ITM_LEVELS = ("case", "slice")


class _PseudoLabelled(Dataset):
    """Batches ``schedule[start:]``: stacked images and the current pseudo-labels (read at fetch time)."""

    def __init__(self, images: torch.Tensor, labels: Callable[[], torch.Tensor], schedule: list, start: int) -> None:
        self.images, self.labels, self.schedule, self.start = images, labels, schedule, start

    def __len__(self) -> int:
        return len(self.schedule) - self.start

    def __getitem__(self, j: int) -> dict[str, torch.Tensor]:
        idx = torch.tensor(self.schedule[self.start + j])
        return {DataKeys.IMAGE.value: self.images[idx], DataKeys.LABEL.value: self.labels()[idx].float()}


class TGMARunner:
    """Transferability-guided multi-source model adaptation (Yang, Liu and Yuan, MICCAI 2023) over one target set.

    Args:
        sources: the source models (same architecture), as a sequence or ``{name: model}``; never modified.
        output_dir: folder of the run.
        activation: ``"sigmoid"`` (multi-label / binary) or ``"softmax"`` (channel 0 = background).
        threshold: sigmoid binarisation threshold.
        n_selected: models kept by the selection (1 main + ``n_selected - 1`` auxiliary; paper: 2).
        itm_level: ``"case"`` (ITM row per case, pooled over its inputs) or ``"slice"`` (per input).
        margin: dilation of the attention mask, in pixels.
        perturbation: ``"noise"`` or ``"mean"`` (see :func:`~monai_tta.tgma.lftm.perturb_unattended`).
        strength: noise scale of the perturbation.
        epochs: adaptation epochs (paper: 200).
        batch_size: adaptation batch size (paper: 6).
        lr: Adam learning rate (paper: 1e-3).
        refresh: recompute the pseudo-labels every this many epochs (0: never, our default).
        checkpoint_interval: also checkpoint every this many iterations (0: at epoch ends only).
        seed: seed of the batch schedule and of the LFTM noise.
        device: device of the run (default: that of the first source's parameters).
        callback: called as ``callback(event, info)`` after each file written (``"transferability"``,
            ``"checkpoint"``, ``"target_model"``); an exception raised there interrupts the run like a crash.
        safe: the guard (on by default): also predict every case with :class:`~monai_tta.tgma.GuardedEnsemble`
            (``guarded_preds``, ``guard``); ``False`` (or ``"false"``) leaves the published method alone. Not part of
            the run's options: a run's files are the same either way.

    Raises:
        ValueError: for fewer than 2 sources or invalid options.
    """

    def __init__(
        self,
        sources: Sequence[nn.Module] | Mapping[str, nn.Module],
        output_dir: str | os.PathLike,
        activation: str = "sigmoid",
        threshold: float = 0.5,
        n_selected: int = 2,
        itm_level: str = "case",
        margin: int = 4,
        perturbation: str = "noise",
        strength: float = 0.5,
        epochs: int = 200,
        batch_size: int = 6,
        lr: float = 1e-3,
        refresh: int = 0,
        checkpoint_interval: int = 0,
        seed: int = 0,
        device: str | torch.device | None = None,
        callback: Callable[[str, dict[str, Any]], None] | None = None,
        safe: bool | str = True,
    ) -> None:
        named = dict(sources) if isinstance(sources, Mapping) else {f"source_{i}": m for i, m in enumerate(sources)}
        if len(named) < 2:
            raise ValueError(f"TGMA needs at least 2 source models, got {len(named)}.")
        if not 1 <= n_selected <= len(named):
            raise ValueError(
                f"n_selected must be between 1 and {len(named)} (the number of sources), got {n_selected}."
            )
        if epochs < 0 or batch_size < 1 or refresh < 0 or checkpoint_interval < 0 or margin < 0:
            raise ValueError(
                "epochs, refresh, checkpoint_interval and margin must be >= 0 and batch_size >= 1; got "
                f"{epochs}, {refresh}, {checkpoint_interval}, {margin}, {batch_size}."
            )
        self.names, self.sources = [str(k) for k in named], list(named.values())
        self.output_dir = Path(output_dir)
        self.activation = look_up_option(activation, ACTIVATIONS)
        self.perturbation = look_up_option(perturbation, PERTURBATIONS)
        self.itm_level = look_up_option(itm_level, _ITM_LEVELS)
        self.threshold, self.n_selected, self.margin, self.strength = threshold, n_selected, margin, strength
        self.epochs, self.batch_size, self.lr, self.refresh = epochs, batch_size, lr, refresh
        self.checkpoint_interval, self.seed, self.callback = checkpoint_interval, seed, callback
        self.safe = as_flag(safe, "safe")
        param = next(self.sources[0].parameters(), None)
        self.device = torch.device(device) if device is not None else (param.device if param is not None else "cpu")
        self.ensemble: WeightedEnsemble | None = None

    # ----------------------------------------------------------------- helpers
    def config(self, images: torch.Tensor, case_ids: Sequence[str]) -> dict[str, Any]:
        """The options and a fingerprint of the inputs and source weights (a resumed run must have the same)."""
        keys = ("activation", "threshold", "n_selected", "itm_level", "margin", "perturbation", "strength")
        keys += ("epochs", "batch_size", "lr", "refresh", "seed")
        digest = hashlib.sha256(images.detach().cpu().contiguous().numpy().tobytes())
        digest.update("/".join(case_ids).encode())
        for model in self.sources:
            for key, value in model.state_dict().items():
                digest.update(key.encode() + value.detach().cpu().contiguous().numpy().tobytes())
        options = {k: getattr(self, k) for k in keys}
        options["ranks"] = get_world_size()  # the global batch is ranks x batch_size
        return {"sources": list(self.names), "n_inputs": int(images.shape[0]), **options, "digest": digest.hexdigest()}

    def _emit(self, event: str, **info: Any) -> None:
        if self.callback is not None:
            self.callback(event, info)

    def _load(self, name: str, config: dict[str, Any]) -> dict[str, Any] | None:
        """The file ``name`` of the run (``None`` if absent), read by rank 0 and handed to every rank."""
        path = self.output_dir / name
        state = None
        if is_main_process() and path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state["config"] != config:
                raise ValueError(
                    f"{path} was written by a run with other options, inputs or source weights, or on another number "
                    f"of ranks ({state['config']}, now {config}): use another output_dir or delete the folder to "
                    "start again."
                )
        return broadcast_object(state)

    @staticmethod
    def _stack(items: Sequence[Mapping[str, Any]], key: str) -> torch.Tensor:
        """The inputs as one plain tensor (a ``MetaTensor``'s metadata is dropped: the run's files hold plain tensors
        only, so they load with ``weights_only=True`` anywhere)."""
        stacked = torch.stack([torch.as_tensor(item[key]).float() for item in items])
        return stacked.as_tensor() if isinstance(stacked, MetaTensor) else stacked

    def case_ids(self, items: Sequence[Mapping[str, Any]]) -> list[str]:
        """The ITM row of each of ``items`` (what :meth:`transferability` takes as ``case_ids``): the item's
        ``case_id`` (its index when it has none), or its index at ``itm_level="slice"``.

        Args:
            items: the target items, in the order of the images.
        """
        if self.itm_level == "slice":
            return [str(i) for i in range(len(items))]
        return [str(item.get(DataKeys.CASE_ID, i)) for i, item in enumerate(items)]

    # ----------------------------------------------------------------- transferability
    @torch.no_grad()
    def transferability(self, images: torch.Tensor, case_ids: Sequence[str], models: Sequence[nn.Module]) -> dict:
        """LFTM of every model on every input, the ITM and DTM, the selection and the corrected pseudo-labels.

        Args:
            images: ``(N, C, *spatial)`` target inputs.
            case_ids: the case of each input (ITM rows).
            models: the M models scored (in eval mode).

        Returns:
            ``cases``, ``itm`` ``(N_cases, M)``, ``dtm`` ``(M,)``, ``selection`` (dict), ``pseudo`` and the hard
            predictions ``source_preds`` ``(M, N, C_fg, ...)``, ``mean_preds`` (plain ensemble) and ``selected_preds``
            (the selected models' weighted ensemble), all as ``uint8``.
        """
        for m in models:
            m.eval()
        inter, total = [], []
        options = (self.activation, self.margin, self.perturbation, self.strength, self.threshold)
        for i in range(images.shape[0]):
            x = images[i : i + 1].to(self.device)
            seed = derived_seed(self.seed, "lftm", i)  # every model sees the same perturbation of input i
            terms = [lftm_terms(m, x, *options, generator=torch.Generator().manual_seed(seed)) for m in models]
            inter.append(torch.stack([t[0][0] for t in terms]).cpu())
            total.append(torch.stack([t[1][0] for t in terms]).cpu())
        cases, itm = pool_by_case(torch.stack(inter).double(), torch.stack(total).double(), case_ids)
        itm = itm.float()
        dtm = domain_transferability(itm)
        selection = select_models(dtm, self.n_selected)
        row = {c: r for r, c in enumerate(cases)}
        rows = itm[[row[c] for c in case_ids]]
        pseudo, source_preds, mean_preds, selected_preds = [], [], [], []
        sel_w = torch.tensor(selection.weights)
        for i in range(images.shape[0]):
            x = images[i : i + 1].to(self.device)
            probs = torch.stack([activate(m(x), self.activation) for m in models]).cpu()
            pseudo.append(corrected_pseudo_label(probs, rows[i : i + 1], self.activation, self.threshold)[0])
            source_preds.append(hard_foreground(probs[:, 0], self.activation, self.threshold))
            mean = probs.mean(0)
            mean_preds.append(hard_foreground(mean, self.activation, self.threshold)[0])
            sel = weighted_ensemble(probs[list(selection.indices)], sel_w)
            selected_preds.append(hard_foreground(sel, self.activation, self.threshold)[0])
        u8 = torch.uint8
        return {
            "cases": cases,
            "itm": itm,
            "dtm": dtm,
            "selection": selection.as_dict(),
            "pseudo": torch.stack(pseudo).to(u8),
            "source_preds": torch.stack(source_preds, 1).to(u8),
            "mean_preds": torch.stack(mean_preds).to(u8),
            "selected_preds": torch.stack(selected_preds).to(u8),
        }

    # ----------------------------------------------------------------- the run
    def run(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Run (or resume) TGMA on the target inputs and return the results.

        Args:
            items: the target inputs, dicts with an unbatched ``"image"`` ``(C, *spatial)`` (all the same shape) and
                optionally a ``"case_id"`` (inputs of one case share one ITM row). Labels, if present, are not read.

        Returns:
            the transferability results (see :meth:`transferability`) plus ``names`` (the sources), ``adapted_preds``
            (hard predictions of the adapted target model) and ``loss_per_epoch``.

        Raises:
            ValueError: if the output folder holds a run with other options.
        """
        if not items:
            raise ValueError("TGMA needs at least one target input.")
        if is_main_process():
            self.output_dir.mkdir(parents=True, exist_ok=True)
            for tmp in self.output_dir.glob(".*.tmp"):  # left by a kill during a write
                tmp.unlink()
        images = self._stack(items, DataKeys.IMAGE)
        case_ids = self.case_ids(items)
        config = self.config(images, case_ids)
        stage = self._load(TRANSFERABILITY_NAME, config)
        if stage is None:
            if is_main_process():
                stage = {"config": config, **self.transferability(images, case_ids, self.sources)}
                atomic_save(stage, self.output_dir / TRANSFERABILITY_NAME)
                self._emit("transferability")
            stage = broadcast_object(stage)
        selection = ModelSelection(**{k: tuple(v) for k, v in stage["selection"].items()})
        members = [copy.deepcopy(self.sources[k]) for k in selection.indices]
        self.ensemble = WeightedEnsemble(members, selection.weights, self.activation).to(self.device)
        final = self._load(TARGET_MODEL_NAME, config)
        if final is None:
            final = self._adapt(images, case_ids, stage, selection, config)
        self.ensemble.load_state_dict(final["ensemble"])
        self.ensemble.eval()
        with torch.no_grad():
            adapted = [
                hard_foreground(self.ensemble(images[i : i + 1].to(self.device)), self.activation, self.threshold)[0]
                for i in range(images.shape[0])
            ]
        results = {
            **{k: v for k, v in stage.items() if k != "config"},
            "names": list(self.names),
            "case_ids": list(case_ids),
            "adapted_preds": torch.stack(adapted).cpu().to(torch.uint8),
            "loss_per_epoch": list(final["loss_per_epoch"]),
        }
        if self.safe:
            volumes = [str(item.get(DataKeys.CASE_ID, i)) for i, item in enumerate(items)]
            results["guarded_preds"], results["guard"] = self.guarded(images, volumes, selection)
        return results

    @torch.no_grad()
    def guarded(
        self, images: torch.Tensor, volumes: Sequence[str], selection: ModelSelection
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """Each case's hard prediction by :class:`~monai_tta.tgma.GuardedEnsemble` (all its inputs in one call).

        Args:
            images: ``(N, C, *spatial)`` target inputs.
            volumes: the case of each input.
            selection: the run's selection (the untouched ensemble's members and weights).

        Returns:
            the hard predictions ``(N, C_fg, ...)`` (uint8) and one record per case: ``case_id``, ``choice``
            (``"target"`` or ``"source"``), ``margin`` (positive keeps the target model), the two scores and the signal.
        """
        members = [copy.deepcopy(self.sources[k]) for k in selection.indices]
        source = WeightedEnsemble(members, selection.weights, self.activation)
        guard = GuardedEnsemble(copy.deepcopy(self.ensemble), source.to(self.device), serve=TgmaServe.GUARDED).eval()
        preds: list[torch.Tensor | None] = [None] * images.shape[0]
        records = []
        groups: dict[str, list[int]] = {}
        for i, case in enumerate(volumes):
            groups.setdefault(case, []).append(i)
        for case, idx in groups.items():
            prob = guard(images[idx].to(self.device))
            for j, i in enumerate(idx):
                preds[i] = hard_foreground(prob[j : j + 1], self.activation, self.threshold)[0].cpu()
            records.append(
                {
                    "case_id": case,
                    "choice": guard.last_choice,
                    "margin": guard.last_margin,
                    "target_score": guard.last_target_score,
                    "source_score": guard.last_source_score,
                    "signal": guard.signal,
                }
            )
        return torch.stack(preds).to(torch.uint8), records

    def _adapt(
        self,
        images: torch.Tensor,
        case_ids: Sequence[str],
        stage: Mapping[str, Any],
        selection: ModelSelection,
        config: dict[str, Any],
    ) -> dict[str, Any]:
        n, ranks = images.shape[0], get_world_size()
        per_epoch = -(-n // (self.batch_size * ranks))
        seed = derived_seed(self.seed, "adapt")
        schedule = night_schedule(list(range(n)), self.batch_size * ranks, self.epochs, seed=seed)  # global batches
        optimizer = build_optimizer(list(self.ensemble.parameters()), "adam", self.lr)
        state = {"config": config, "iteration": 0, "pseudo": stage["pseudo"], "loss_sum": 0.0, "loss_per_epoch": []}
        saved = self._load(CHECKPOINT_NAME, config)
        if saved is not None:
            state = saved
            self.ensemble.load_state_dict(saved["ensemble"])
            optimizer.load_state_dict(saved["optimizer"])
        done = int(state["iteration"])
        if done < len(schedule):
            parts = [rank_batch(batch) for batch in fill_global_batches(schedule, ranks)]  # this rank's parts
            dataset = _PseudoLabelled(images, lambda: state["pseudo"], parts, done)
            loader = DataLoader(dataset, batch_size=None, shuffle=False)
            network = wrap_ddp(self.ensemble, self.device)
            trainer = tgma_trainer(self.ensemble, loader, optimizer, self.device, network=network)

            def _after_iteration(engine: Any) -> None:
                k = done + engine.state.iteration
                state["iteration"] = k
                state["loss_sum"] += float(engine.state.output[CommonKeys.LOSS].detach())
                epoch_end = k % per_epoch == 0
                if epoch_end:
                    state["loss_per_epoch"] = [*state["loss_per_epoch"], state["loss_sum"] / per_epoch]
                    state["loss_sum"] = 0.0
                    epoch = k // per_epoch
                    if self.refresh and epoch % self.refresh == 0 and k < len(schedule):
                        pseudo = self._refreshed_pseudo(images, case_ids, selection) if is_main_process() else None
                        state["pseudo"] = broadcast_object(pseudo)
                        self.ensemble.train()
                if (
                    is_main_process()
                    and k < len(schedule)
                    and (epoch_end or (self.checkpoint_interval and k % self.checkpoint_interval == 0))
                ):
                    state["ensemble"] = copy.deepcopy(self.ensemble.state_dict())
                    state["optimizer"] = copy.deepcopy(optimizer.state_dict())
                    atomic_save(state, self.output_dir / CHECKPOINT_NAME)
                    self._emit("checkpoint", iteration=k)

            trainer.add_event_handler(Events.ITERATION_COMPLETED, _after_iteration)
            trainer.run()
        final = None
        if is_main_process():  # rank 0's model: under DDP the BatchNorm running statistics are rank 0's
            final = {
                "config": config,
                "ensemble": copy.deepcopy(self.ensemble.state_dict()),
                "selection": selection.as_dict(),
                "names": [self.names[k] for k in selection.indices],
                "loss_per_epoch": list(state["loss_per_epoch"]),
            }
            atomic_save(final, self.output_dir / TARGET_MODEL_NAME)
            self._emit("target_model")
        return broadcast_object(final)

    def _refreshed_pseudo(
        self, images: torch.Tensor, case_ids: Sequence[str], selection: ModelSelection
    ) -> torch.Tensor:
        """Corrected pseudo-labels recomputed with the adapted members in place of their sources."""
        models = list(self.sources)
        for member, k in zip(self.ensemble.members, selection.indices):
            models[k] = member
        return self.transferability(images, case_ids, models)["pseudo"]
