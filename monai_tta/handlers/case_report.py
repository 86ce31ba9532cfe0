"""Per-case records (Dice, surface distances, adaptation statistics) and a per-domain summary for an evaluator."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monai.data import MetaTensor
from monai.utils import IgniteInfo, min_version, optional_import

from monai_tta.engines.evaluator import ADAPT_KEY
from monai_tta.keys import DataKeys
from monai_tta.metrics import asd_per_channel, dice_per_channel, hd95_per_channel
from monai_tta.reports import MEAN_DICE, markdown_table, plot_domain_dice, summarize, write_case_csv

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["CaseReport"]


class CaseReport:
    """Write one CSV row per case as the evaluator goes, and a per-domain summary at the end.

    Rows hold ``case_id``, ``domain``, ``method``, Dice and average surface distance (in voxels) per channel and their
    means, optionally the 95th-percentile Hausdorff distance (``hd95_*``, in the prediction's physical units when it is
    a ``MetaTensor``, else in voxels), and the adapter's statistics. The CSV is rewritten (atomically) after every
    case, so an interrupted run keeps the cases it scored. At completion it writes ``summary.json``, ``summary.md`` and
    ``dice_per_domain.png`` and logs the per-domain table.

    Args:
        output_dir: folder for ``cases.csv`` and the summary files.
        method: name of the method (a column of the CSV).
        channel_names: one name per output channel (e.g. ``["disc", "cup"]``).
        pred_key: key of the post-processed, binarised prediction.
        label_key: key of the label.
        compute_asd: also compute the average surface distance.
        compute_hd95: also compute the 95th-percentile Hausdorff distance (:func:`~monai_tta.metrics.hd95_per_channel`),
            with the voxel size of the prediction's affine.
        name: logger name.

    Raises:
        ValueError: if ``channel_names`` is empty.
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
        self.logger = logging.getLogger(name)
        self.rows: list[dict[str, Any]] = []
        self.summary: dict[str, dict[str, float]] = {}

    def attach(self, engine: Engine) -> None:
        """Register on ``engine``'s events."""
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        self.rows = []

    def __call__(self, engine: Engine) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        for item, data in zip(outputs, batch):
            self.rows.append(self.record(item, data, len(self.rows)))
        write_case_csv(self.output_dir / "cases.csv", self.rows)

    def record(self, item: dict[str, Any], data: dict[str, Any], index: int) -> dict[str, Any]:
        """One CSV row for a decollated output ``item`` and its input ``data``."""
        pred, label = item[self.pred_key], item.get(self.label_key)
        row: dict[str, Any] = {
            DataKeys.CASE_ID.value: str(data.get(DataKeys.CASE_ID, index)),
            DataKeys.DOMAIN.value: str(data.get(DataKeys.DOMAIN, "all")),
            "method": self.method,
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

    def _completed(self, engine: Engine) -> None:
        if not self.rows:
            return
        self.summary = summarize(self.rows)
        (self.output_dir / "summary.json").write_text(json.dumps({self.method: self.summary}, indent=2))
        if MEAN_DICE not in self.rows[0]:
            return
        cols = [f"dice_{c}" for c in self.channel_names] + [MEAN_DICE]
        cols += ["asd_mean"] if self.compute_asd else []
        cols += ["hd95_mean"] if self.compute_hd95 else []
        table = markdown_table(self.summary, cols, row_title="domain")
        (self.output_dir / "summary.md").write_text(f"# {self.method}\n\n{table}\n")
        domains = [d for d in self.summary if d != "overall"]
        plot_domain_dice(
            {self.method: {d: self.summary[d][MEAN_DICE] for d in domains}},
            domains,
            self.output_dir / "dice_per_domain.png",
            title=f"{self.method}: mean Dice per domain",
        )
        self.logger.info(f"{self.method}: per-domain summary\n{table}")
