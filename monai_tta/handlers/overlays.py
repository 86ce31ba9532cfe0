"""Overlay PNGs of the first cases of a stream: image, prediction and label."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from monai.utils import IgniteInfo, min_version, optional_import

from monai_tta.data.guarded import is_failure
from monai_tta.data.keys import DataKeys
from monai_tta.reports import plot_overlay

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["OverlaySaver"]


class OverlaySaver:
    """Write ``<output_dir>/<index>_<case_id>.png`` for the first ``num_cases`` cases of the stream.

    Each PNG shows the image with the binarised prediction and the label over it (an axial, a coronal and a sagittal
    view for volumes; see :func:`monai_tta.reports.plot_overlay`). The stream position is the case's
    ``stream_index`` when it has one (a sharded run), else its order in this run, so a sharded run writes the same
    files as one process.

    Args:
        output_dir: folder of the PNGs.
        num_cases: how many cases (from the start of the stream) get an overlay; 0 writes none.
        image_key: key of the input image in the batch.
        pred_key: key of the binarised prediction in the output.
        label_key: key of the label in the output (skipped when absent).

    Raises:
        ValueError: if ``num_cases`` is negative.
    """

    def __init__(
        self,
        output_dir: str | Path,
        num_cases: int = 4,
        image_key: str = DataKeys.IMAGE,
        pred_key: str = DataKeys.PRED,
        label_key: str = DataKeys.LABEL,
    ) -> None:
        if num_cases < 0:
            raise ValueError(f"num_cases must be >= 0, got {num_cases}.")
        self.output_dir = Path(output_dir)
        self.num_cases = int(num_cases)
        self.image_key, self.pred_key, self.label_key = image_key, pred_key, label_key
        self.count = 0

    def attach(self, engine: Engine) -> None:
        """Register on ``engine``'s events."""
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _started(self, engine: Engine) -> None:
        self.count = 0

    def __call__(self, engine: Engine) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        # without a stream index (one process), a CaseStream's position counts the cases a resumed run skipped
        position = getattr(engine.data_loader, "position", None)
        start = position - len(batch) if isinstance(position, int) else self.count
        for offset, (item, data) in enumerate(zip(outputs, batch)):
            if is_failure(item):  # a case that failed to load: nothing to draw
                continue
            index = int(data.get(DataKeys.STREAM_INDEX, start + offset))
            self.count += 1
            if index >= self.num_cases:
                continue
            case_id = str(data.get(DataKeys.CASE_ID, index))
            image = item.get(self.image_key, data.get(self.image_key))
            plot_overlay(
                image,
                item[self.pred_key],
                self.output_dir / f"{index:04d}_{case_id}.png",
                label=item.get(self.label_key),
                title=f"{case_id} ({data.get(DataKeys.DOMAIN, '')})",
            )
