"""Progress that fits where a run is watched: a live bar on a terminal, a periodic one-line log in a file or CI."""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, TYPE_CHECKING

from monai.utils import IgniteInfo, look_up_option, min_version, optional_import

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
ProgressBar, _ = optional_import("ignite.handlers", IgniteInfo.OPT_IMPORT_VERSION, min_version, "ProgressBar")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["Progress", "PROGRESS_MODES", "UNKNOWN_LENGTH_EVERY"]

#: ``auto``: a bar when ``stream`` is a terminal, else log lines; ``bar``; ``log``; ``off``.
PROGRESS_MODES = ("auto", "bar", "log", "off")

#: cases between two lines when the stream's length is not known beforehand (a deferred or iterable data set).
UNKNOWN_LENGTH_EVERY = 50


class Progress:
    """Show an engine's progress: ignite's live ``ProgressBar`` on a terminal, otherwise one log line every
    ``every_cases`` cases or ``every_seconds`` seconds (whichever comes first) and one at the end.

    Without a terminal a bar writes a line per update into the log, hundreds for a stream; the log lines say the
    count, the share done, the rate and the time left instead.

    Args:
        desc: what is progressing (the bar's label, the lines' prefix).
        mode: one of :data:`PROGRESS_MODES`.
        every_cases: cases between two lines; default: a tenth of the run (at least 1), or
            :data:`UNKNOWN_LENGTH_EVERY` when the run's length is not known beforehand.
        every_seconds: longest time between two lines.
        stream: the stream whose being a terminal decides ``auto`` (default ``sys.stderr``, where the bar draws).
        name: logger name of the lines.

    Raises:
        ValueError: for an unknown mode, or non-positive ``every_cases`` or ``every_seconds``.
    """

    def __init__(
        self,
        desc: str = "adapting",
        mode: str = "auto",
        every_cases: int | None = None,
        every_seconds: float = 60.0,
        stream: IO | None = None,
        name: str = "monai_tta.progress",
    ) -> None:
        self.mode = look_up_option(mode, PROGRESS_MODES)
        if every_cases is not None and every_cases < 1:
            raise ValueError(f"every_cases must be >= 1, got {every_cases}.")
        if every_seconds <= 0:
            raise ValueError(f"every_seconds must be > 0, got {every_seconds}.")
        self.desc, self.every_cases, self.every_seconds = desc, every_cases, float(every_seconds)
        self.stream = stream
        self.logger = logging.getLogger(name)
        self._start = self._last_time = 0.0
        self._last_count = 0

    def resolved_mode(self) -> str:
        """``bar``, ``log`` or ``off``: what ``auto`` means for this run's stream."""
        if self.mode != "auto":
            return self.mode
        stream = self.stream if self.stream is not None else sys.stderr
        isatty = getattr(stream, "isatty", None)
        return "bar" if callable(isatty) and isatty() else "log"

    def attach(self, engine: Engine) -> None:
        """Attach the bar or the log lines to ``engine``."""
        mode = self.resolved_mode()
        if mode == "bar":
            ProgressBar(persist=False, desc=self.desc).attach(engine)
        elif mode == "log":
            engine.add_event_handler(Events.STARTED, self._started)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
            engine.add_event_handler(Events.COMPLETED, self._completed)

    def _total(self, engine: Engine) -> int | None:
        return engine.state.epoch_length

    def _started(self, engine: Engine) -> None:
        self._start = self._last_time = time.perf_counter()
        self._last_count = 0

    def _iteration(self, engine: Engine) -> None:
        done, total = engine.state.iteration, self._total(engine)
        every = self.every_cases or (max(total // 10, 1) if total else UNKNOWN_LENGTH_EVERY)
        now = time.perf_counter()
        if done - self._last_count >= every or now - self._last_time >= self.every_seconds:
            if total is None or done < total:
                self.logger.info(self.line(done, total, now - self._start))
                self._last_count, self._last_time = done, now

    def _completed(self, engine: Engine) -> None:
        self.logger.info(self.line(engine.state.iteration, self._total(engine), time.perf_counter() - self._start))

    def line(self, done: int, total: int | None, elapsed: float) -> str:
        """One progress line, e.g. ``adapting: 30/120 cases (25%), 2.41 cases/s, 37 s left``."""
        rate = done / elapsed if elapsed > 0 else float("nan")
        if total:
            left = (total - done) / rate if rate > 0 else float("nan")
            share = f"{done}/{total} cases ({100 * done / total:.0f}%)"
            return f"{self.desc}: {share}, {rate:.2f} cases/s, {left:.0f} s left"
        return f"{self.desc}: {done} cases, {rate:.2f} cases/s"
