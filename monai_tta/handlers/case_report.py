"""Per-case records (Dice, surface distances, adaptation statistics) and a per-domain summary for an evaluator."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monai.data import MetaTensor
from monai.utils import IgniteInfo, min_version, optional_import

from monai_tta import distributed
from monai_tta.data.guarded import FAILURE_KEY
from monai_tta.data.keys import CaseStatus, DataKeys
from monai_tta.engines.evaluator import ADAPT_KEY, CASE_METRICS
from monai_tta.io import atomic_write_json, atomic_write_text
from monai_tta.metrics import asd_per_channel, dice_per_channel, hd95_per_channel
from monai_tta.reports import MEAN_DICE, markdown_table, plot_domain_dice, plot_stream_stats, summarize, write_case_csv

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["CaseReport", "SUMMARY_FILES"]

#: files written only once every case is scored (removed at the start of a run, so none is ever stale or partial).
SUMMARY_FILES = ("summary.json", "summary.md", "dice_per_domain.png", "stream.png")


class CaseReport:
    """Write one CSV row per case as the evaluator goes, and a per-domain summary at the end.

    Rows hold ``case_id``, ``domain``, ``method``, ``status`` (``ok`` or ``failed``), Dice and average surface distance
    (in voxels) per channel and their means, optionally the 95th-percentile Hausdorff distance (``hd95_*``, in the
    prediction's physical units when it is a ``MetaTensor``, else in voxels), and the adapter's statistics. A case that
    failed to load or validate (reported by the engine's :class:`~monai_tta.data.CaseStream`) gets a row with
    ``status=failed`` and its ``error``, in stream order. The CSV is rewritten (atomically) after every case, so an
    interrupted run keeps the cases it scored. At completion it writes ``summary.json`` (per domain: the means over the
    scored cases, ``n`` and ``n_failed``), ``summary.md``, ``dice_per_domain.png`` and ``stream.png`` (Dice and
    adaptation statistics along the stream, per domain) and logs the per-domain table. Each case's scalars also go to
    ``engine.state.case_metrics``, which trackers log.

    In a run sharded over ranks (:mod:`monai_tta.distributed`) each rank writes its rows to ``cases.rank<r>.csv`` as
    it goes; at completion rank 0 gathers every rank's rows, checks that each case of the stream is there exactly once
    (and, with ``expected_cases``, that none is missing), puts them in stream order and writes the same ``cases.csv``
    and summary files as one process. If a rank dies the run fails before that point, so no summary is written; rank 0
    removes the summary files of an earlier run when a run starts (in a sharded run also the merged ``cases.csv`` and
    the ``cases.rank<k>.csv`` of ranks it does not have).

    Args:
        output_dir: folder for ``cases.csv`` and the summary files.
        method: name of the method (a column of the CSV).
        channel_names: one name per output channel (e.g. ``["disc", "cup"]``).
        pred_key: key of the post-processed, binarised prediction.
        label_key: key of the label.
        compute_asd: also compute the average surface distance.
        compute_hd95: also compute the 95th-percentile Hausdorff distance (:func:`~monai_tta.metrics.hd95_per_channel`),
            with the voxel size of the prediction's affine.
        expected_cases: number of cases of the whole stream, or a function returning it, checked at completion
            (``None``: not checked).
        name: logger name.

    Raises:
        ValueError: if ``channel_names`` is empty.
        RuntimeError: at completion, if the gathered rows miss a case or hold one twice.
    """

    def __init__(
        self,
        output_dir: str | Path,
        method: str,
        channel_names: Sequence[str] = ("disc", "cup"),
        pred_key: str = DataKeys.PRED,
        label_key: str = DataKeys.LABEL,
        compute_asd: bool = True,
        compute_hd95: bool = False,
        expected_cases: int | Callable[[], int] | None = None,
        name: str = "monai_tta.report",
    ) -> None:
        if not channel_names:
            raise ValueError("channel_names must name at least one channel.")
        self.output_dir = Path(output_dir)
        self.method = method
        self.channel_names = list(channel_names)
        self.pred_key, self.label_key = pred_key, label_key
        self.compute_asd = compute_asd
        self.compute_hd95 = compute_hd95
        self.expected_cases = expected_cases
        self.logger = logging.getLogger(name)
        self.rows: list[dict[str, Any]] = []
        self.indices: list[int] = []
        self.summary: dict[str, dict[str, float]] = {}

    @property
    def rows_path(self) -> Path:
        """The CSV this process writes as it goes: ``cases.csv``, or ``cases.rank<r>.csv`` in a sharded run."""
        if distributed.get_world_size() > 1:
            return self.output_dir / f"cases.rank{distributed.get_rank()}.csv"
        return self.output_dir / "cases.csv"

    def attach(self, engine: Engine) -> None:
        """Register on ``engine``'s events."""
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        self.rows, self.indices = [], []
        if not distributed.is_main_process():
            return
        world = distributed.get_world_size()
        stale = [self.output_dir / name for name in SUMMARY_FILES]
        if world > 1:  # the merged cases.csv is written with the summary; rows of ranks this run does not have
            stale.append(self.output_dir / "cases.csv")
            for path in self.output_dir.glob("cases.rank*.csv"):
                rank = path.name[len("cases.rank") : -len(".csv")]
                stale += [path] if rank.isdigit() and int(rank) >= world else []
        for path in stale:
            path.unlink(missing_ok=True)

    def __call__(self, engine: Engine) -> None:
        self._add_failures(engine)
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        new = []
        for item, data in zip(outputs, batch):
            new.append(self.record(item, data, len(self.rows)))
            self.indices.append(int(data.get(DataKeys.STREAM_INDEX, len(self.rows))))
            self.rows.append(new[-1])
        write_case_csv(self.rows_path, self.rows)
        metrics = getattr(engine.state, CASE_METRICS, None) or {}
        for key in new[0] if new else []:
            values = [row[key] for row in new if isinstance(row.get(key), float)]
            if len(values) == len(new):
                metrics[key] = sum(values) / len(values)
        setattr(engine.state, CASE_METRICS, metrics)

    def _add_failures(self, engine: Engine) -> None:
        """Rows for the cases the engine's data stream could not load or validate since the last case."""
        pop = getattr(engine.data_loader, "pop_failures", None)
        for failure in pop() if callable(pop) else []:
            self.indices.append(int(failure.get(DataKeys.STREAM_INDEX, len(self.rows))))
            self.rows.append(
                {
                    DataKeys.CASE_ID.value: failure[DataKeys.CASE_ID],
                    DataKeys.DOMAIN.value: failure[DataKeys.DOMAIN],
                    "method": self.method,
                    CaseStatus.KEY.value: CaseStatus.FAILED.value,
                    CaseStatus.ERROR.value: failure[FAILURE_KEY],
                }
            )

    def record(self, item: dict[str, Any], data: dict[str, Any], index: int) -> dict[str, Any]:
        """One CSV row for a decollated output ``item`` and its input ``data``."""
        pred, label = item[self.pred_key], item.get(self.label_key)
        row: dict[str, Any] = {
            DataKeys.CASE_ID.value: str(data.get(DataKeys.CASE_ID, index)),
            DataKeys.DOMAIN.value: str(data.get(DataKeys.DOMAIN, "all")),
            "method": self.method,
            CaseStatus.KEY.value: CaseStatus.OK.value,
        }
        if label is not None:
            if len(pred) != len(self.channel_names):
                raise ValueError(f"prediction has {len(pred)} channels but {len(self.channel_names)} names were given.")
            dice = dice_per_channel(pred, label)
            row.update({f"dice_{c}": v for c, v in zip(self.channel_names, dice)})
            row[MEAN_DICE] = sum(dice) / len(dice)
            if self.compute_asd:
                asd = asd_per_channel(pred, label)
                row.update({f"asd_{c}": v for c, v in zip(self.channel_names, asd)})
                row["asd_mean"] = sum(asd) / len(asd)
            if self.compute_hd95:
                spacing = pred.pixdim.tolist() if isinstance(pred, MetaTensor) else None
                hd95 = hd95_per_channel(pred, label, spacing)
                row.update({f"hd95_{c}": v for c, v in zip(self.channel_names, hd95)})
                row["hd95_mean"] = sum(hd95) / len(hd95)
        row.update({k: float(v) for k, v in item.get(ADAPT_KEY, {}).items()})
        return row

    def _gather(self) -> bool:
        """On rank 0 of a sharded run, replace ``self.rows`` with every rank's rows in stream order and write them.

        Returns:
            whether this process writes the summary (rank 0).
        """
        gathered = distributed.gather_objects((self.indices, self.rows))
        if gathered is None:
            return False
        if len(gathered) == 1:
            return True
        pairs = sorted((i, row) for indices, rows in gathered for i, row in zip(indices, rows))
        indices = [i for i, _ in pairs]
        twice = sorted(i for i, n in Counter(indices).items() if n > 1)
        count = self.expected_cases() if callable(self.expected_cases) else self.expected_cases
        expected = range(count) if count is not None else range(len(set(indices)))
        missing = sorted(set(expected) - set(indices))
        if twice or missing or len(indices) != len(expected):
            raise RuntimeError(
                f"{self.method}: the gathered per-case rows are incomplete: stream cases {missing} are missing and "
                f"{twice} appear twice ({len(indices)} rows from {len(gathered)} ranks). No summary was written; "
                f"rerun the same command."
            )
        self.rows = [row for _, row in pairs]
        self.indices = indices
        write_case_csv(self.output_dir / "cases.csv", self.rows)
        return True

    def _completed(self, engine: Engine) -> None:
        self._add_failures(engine)
        if not self._gather() or not self.rows:
            return
        write_case_csv(self.output_dir / "cases.csv", self.rows)
        scored = [r for r in self.rows if r.get(CaseStatus.KEY.value) != CaseStatus.FAILED.value]
        self.summary = summarize(scored)
        for row in self.rows:
            if row.get(CaseStatus.KEY.value) == CaseStatus.FAILED.value:
                entry = self.summary.setdefault(str(row[DataKeys.DOMAIN]), {"n": 0})
                entry["n_failed"] = entry.get("n_failed", 0) + 1
        if "overall" in self.summary:
            self.summary["overall"]["n_failed"] = len(self.rows) - len(scored)
        atomic_write_json({self.method: self.summary}, self.output_dir / "summary.json")
        if not scored or MEAN_DICE not in scored[0]:
            return
        cols = [f"dice_{c}" for c in self.channel_names] + [MEAN_DICE]
        cols += ["asd_mean"] if self.compute_asd else []
        cols += ["hd95_mean"] if self.compute_hd95 else []
        cols += ["n_failed"] if len(scored) < len(self.rows) else []
        table = markdown_table(self.summary, cols, row_title="domain")
        atomic_write_text(f"# {self.method}\n\n{table}\n", self.output_dir / "summary.md")
        domains = [d for d in self.summary if d != "overall" and MEAN_DICE in self.summary[d]]
        plot_domain_dice(
            {self.method: {d: self.summary[d][MEAN_DICE] for d in domains}},
            domains,
            self.output_dir / "dice_per_domain.png",
            title=f"{self.method}: mean Dice per domain",
        )
        plot_stream_stats(self.rows, self.output_dir / "stream.png", title=f"{self.method}: along the stream")
        self.logger.info(f"{self.method}: per-domain summary\n{table}")
