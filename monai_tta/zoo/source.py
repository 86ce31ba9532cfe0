"""The bundles' source model: train it with the bundle's ``source_training.json`` on first use, and load it."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_tta import distributed
from monai_tta.flags import as_flag
from monai_tta.zoo.run import run_bundle

__all__ = ["ensure_source_checkpoint", "load_source_model"]

logger = logging.getLogger(__name__)


def ensure_source_checkpoint(
    checkpoint: str | Path,
    bundle_root: str | Path,
    overrides: Mapping[str, Any] | None = None,
    configs: Sequence[str] = ("inference.json", "source_training.json"),
    train: bool = True,
) -> Path:
    """Train the bundle's source model with its ``source_training.json`` when ``checkpoint`` does not exist yet.

    The source checkpoint is never overwritten once it exists, and it is never downloaded. A bundle's ``run`` calls
    this with ``train=@train_if_missing`` (``false`` by default): a bundle that needs a source model says so, with the
    command that trains it, instead of training inside an inference run; ``--train_if_missing true`` opts in.

    A run over several ranks (``torchrun``) trains only when the bundle has a data-parallel override of the training,
    ``configs/multi_gpu_<last config>`` (e.g. ``multi_gpu_source_training.json``, the zoo's ``multi_gpu_train.json``
    form): then every rank calls this function at the same point of its run, they all train together with that
    override merged last, and they wait for each other before reading the checkpoint rank 0 wrote. Without one, a
    sharded run does not train (the training's validation metrics would all-gather across ranks that are not all
    training, and the ranks would wait on each other forever): every rank fails with a message giving the one-process
    command that trains the model first.

    Args:
        checkpoint: expected path of the source weights (``models/model.pt``).
        bundle_root: bundle folder holding ``configs/source_training.json``.
        overrides: overrides passed to the training run; values may be objects already built by the calling config
            (its ``network``, ``preprocessing``, ``datalist_file``, ``device``), so that the source model is trained
            with exactly the inference run's network and data. Keys starting with ``_`` are ignored.
        configs: the config files that make up the training run.
        train: whether to train a missing checkpoint; ``False``: raise ``FileNotFoundError`` naming the checkpoint and
            the command that trains it (read by :func:`~monai_tta.zoo.as_flag`: the command line's ``false`` is the
            string ``"false"``).

    Returns:
        the checkpoint path.

    Raises:
        FileNotFoundError: if the checkpoint does not exist and ``train`` is ``False``.
        ValueError: if ``train`` is neither a bool nor a yes/no string.
        RuntimeError: if training finished without writing the checkpoint, or (on every rank) when a sharded run
            finds no checkpoint.
    """
    checkpoint = Path(checkpoint)
    train = as_flag(train, "train_if_missing")
    if checkpoint.is_file():
        return checkpoint
    if not train:
        raise FileNotFoundError(_missing_checkpoint_message(checkpoint, bundle_root, configs))
    multi_gpu = Path(bundle_root) / "configs" / f"multi_gpu_{Path(configs[-1]).name}"
    data_parallel = distributed.get_world_size() > 1 and multi_gpu.is_file()
    if distributed.get_world_size() > 1 and not data_parallel:
        files = ", ".join(f"'configs/{c}'" for c in configs)
        raise RuntimeError(
            f"rank {distributed.get_rank()}: the source checkpoint {checkpoint} does not exist, and a run sharded over "
            f"ranks does not train it. Train it first in one process, e.g. `python -m monai.bundle run --config_file "
            f'"[{files}]" --ckpt_dir {checkpoint.parent} --ckpt_filename {checkpoint.name}` (with this run\'s '
            f"overrides), or run the same command once without torchrun, then launch torchrun again."
        )
    configs = [*configs, multi_gpu.name] if data_parallel else list(configs)
    logger.info(f"source checkpoint {checkpoint} not found: training the source model with {configs}.")
    overrides = {k: v for k, v in dict(overrides or {}).items() if not k.startswith("_")}
    run_bundle(
        bundle_root,
        configs,
        {**overrides, "ckpt_dir": str(checkpoint.parent), "ckpt_filename": checkpoint.name},
        logging_file=False,
        record_as="source_training",
    )
    distributed.barrier()  # rank 0 has written the checkpoint
    if not checkpoint.is_file():
        raise RuntimeError(f"source training finished but {checkpoint} was not written.")
    return checkpoint


def _missing_checkpoint_message(checkpoint: Path, bundle_root: str | Path, configs: Sequence[str]) -> str:
    files = ",".join(f"'configs/{Path(c).name}'" for c in configs)
    where = Path(bundle_root).resolve()
    target = ""
    if checkpoint.resolve() != where / "models" / "model.pt":
        target = f" --ckpt_dir {checkpoint.parent} --ckpt_filename {checkpoint.name}"
    return (
        f"the source checkpoint {checkpoint} does not exist, and this bundle does not train inside an inference run "
        f"unless asked. Train it first, in {where}: "
        f'`python -m monai.bundle run --config_file "[{files}]"{target}` (with the same data and network overrides '
        f"as this run), or copy your source weights there, or add `--train_if_missing true` to this command to train "
        f"it now."
    )


def load_source_model(network: Any, checkpoint: str | Path, key: str = "model") -> Any:
    """Load a source checkpoint into ``network`` (in place, then ``eval()``) and return it; the file is only read.

    Accepts what MONAI's ``CheckpointSaver`` writes: the network's state dict itself (one saved object) or a dict
    holding it under ``key``.

    Args:
        network: the freshly built network.
        checkpoint: path of the checkpoint.
        key: key of the network's state dict in a multi-object checkpoint.

    Raises:
        FileNotFoundError: if the checkpoint does not exist.
    """
    import torch

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"source checkpoint not found: {path}; train it first (train_if_missing) or fix the path."
        )
    device = next(iter(network.parameters())).device
    state = torch.load(path, map_location=device, weights_only=True)
    if key in state and isinstance(state[key], dict):
        state = state[key]
    network.load_state_dict(state)
    return network.eval()
