"""Run a bundle's configs in-process, and record the merged config of a run."""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_tta import distributed
from monai_tta.io import atomic_write_text

__all__ = ["run_bundle", "record_config"]

logger = logging.getLogger(__name__)


def run_bundle(
    bundle_root: str | Path,
    configs: Sequence[str],
    overrides: Mapping[str, Any] | None = None,
    run_id: str = "run",
    meta_file: str | None = None,
    logging_file: str | bool | None = None,
    record_as: str | None = None,
    tracking: str | dict | None = None,
) -> Any:
    """Run ``configs`` of a bundle in this process, merged in order.

    A config is a file name in ``<bundle_root>/configs`` or a path to another file (e.g. a thin bundle's override).

    Args:
        bundle_root: bundle folder.
        configs: config file names, e.g. ``["inference.json", "evaluate.json"]``.
        overrides: config overrides (``{"key": value}``); ``bundle_root`` is always set.
        run_id: id of the expression list to run.
        meta_file: metadata file (default ``configs/metadata.json``).
        logging_file: logging config (default ``configs/logging.conf``; ``False`` keeps the current logging).
        record_as: name of the run record's folder under ``output_dir`` (default: the config's ``method``); see
            :func:`record_config`.
        tracking: experiment tracking as ``monai.bundle run --tracking``: ``"mlflow"``, or settings (a dict or the
            path of a settings file such as ``configs/tracking_tensorboard.json``); ``None``: none.

    Returns:
        the :class:`monai.bundle.ConfigWorkflow` after it ran.

    Raises:
        FileNotFoundError: if a config file does not exist.
    """
    from monai.bundle import ConfigWorkflow

    root = Path(bundle_root)
    files = [root / "configs" / c if not Path(c).is_file() else Path(c) for c in configs]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"bundle config not found: {f}")
    meta = Path(meta_file) if meta_file else root / "configs" / "metadata.json"
    log_conf = root / "configs" / "logging.conf" if logging_file is None else logging_file
    workflow = ConfigWorkflow(
        config_file=[str(f) for f in files],
        meta_file=str(meta),
        logging_file=str(log_conf) if log_conf else False,
        run_id=run_id,
        workflow_type=None,
        tracking=tracking,
        **{"bundle_root": str(root), **dict(overrides or {})},
    )
    workflow.initialize()
    record_config(workflow, [str(f) for f in files], dict(overrides or {}), record_as)
    workflow.run()
    workflow.finalize()
    return workflow


def record_config(
    workflow: Any, config_files: Sequence[str], overrides: Mapping[str, Any], name: str | None = None
) -> Path | None:
    """Write the merged config, the overrides and the software versions of a run next to its results.

    The file is ``<output_dir>/<name>/config.json``, ``name`` defaulting to the config's ``method``
    (``<output_dir>/config.json`` without either); a run without ``output_dir`` records nothing. Objects that are not
    JSON (e.g. a network passed as an override) are written as their ``repr``.

    Args:
        workflow: an initialised :class:`monai.bundle.ConfigWorkflow`.
        config_files: the merged config files, in order.
        overrides: the overrides given to the run.
        name: folder of the record under ``output_dir`` (the source training made on first use records itself as
            ``source_training``, so it never overwrites the record of the adaptation run that triggered it).

    Returns:
        the path written, or ``None`` (also on ranks other than 0 of a sharded run).
    """
    import monai
    import torch

    parser = workflow.parser
    if "output_dir" not in parser or not distributed.is_main_process():
        return None
    folder = Path(parser.get_parsed_content("output_dir"))
    if name is not None:
        folder = folder / name
    elif "method" in parser:
        folder = folder / str(parser.get_parsed_content("method"))
    folder.mkdir(parents=True, exist_ok=True)
    from monai_tta import __version__

    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config_files": list(config_files),
        "overrides": dict(overrides),
        "versions": {
            "monai_tta": __version__,
            "monai": monai.__version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "config": parser.get(),
    }
    path = folder / "config.json"
    atomic_write_text(json.dumps(record, indent=2, default=repr), path)
    return path
