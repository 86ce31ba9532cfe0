"""Statistics of a whole case seen in parts (the windows or patches of a volume).

For a volume adapted on patches (:class:`~monai_tta.inferers.SlidingWindowAdapter`), the "current input's statistics"
are those of the whole volume: :func:`pooled_statistics` runs statistics passes over its windows, or
:func:`captured_statistics` takes them from one forward of a batch of its patches, and :func:`case_statistics` makes the
layers normalise every patch with them (see :class:`~monai_tta.norms.layer.AdaptiveBatchNorm`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import torch

from monai_tta.norms.layer import AdaptiveBatchNorm, CaseStats, layer_settings

__all__ = ["case_statistics", "pooled_statistics", "captured_statistics"]


def case_statistics(
    layers: Sequence[AdaptiveBatchNorm], stats: Sequence[CaseStats | None]
) -> AbstractContextManager[None]:
    """Within the context, each layer normalises with its fixed case statistics (``None``: its own input's, as
    before); on exit the layers use their inputs' statistics again.

    Raises:
        ValueError: if ``stats`` does not have one entry per layer.
    """
    if len(stats) != len(layers):
        raise ValueError(f"got {len(stats)} case statistics for {len(layers)} layers.")
    return layer_settings(layers, [{"case_stats": value} for value in stats], on_exit={"case_stats": None})


def pooled_statistics(
    layers: Sequence[AdaptiveBatchNorm], run: Callable[[], None], passes: int = 1
) -> list[CaseStats | None]:
    """Per-layer statistics of one case seen in parts (e.g. the windows of a volume), pooled over all the parts.

    ``run()`` forwards every part of the case through the network (without gradient). Each layer pools the count,
    mean and sum of squared deviations of its inputs per channel over all the parts (float64), and its case statistics
    are their mean and biased variance: the statistics a BatchNorm in training mode would compute on the batch of all
    the parts. In the first pass each part is normalised with its own
    statistics; each further pass normalises with the previous pass's pooled statistics and pools again. After ``k``
    passes the layers with fewer than ``k`` BatchNorm layers upstream have exactly the pooled statistics of the
    network normalised throughout with pooled statistics; ``passes`` = the number of BatchNorm layers makes all of
    them exact. Layers that use only source statistics (``prior >= 1``) get ``None``.

    Args:
        layers: the adaptive layers of the network.
        run: forwards all the parts of the case.
        passes: number of statistics passes (``>= 1``).

    Raises:
        ValueError: if ``passes < 1`` or a layer saw no input.
    """
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}.")
    stats: list[CaseStats | None] = [None] * len(layers)
    for _ in range(passes):
        try:
            for layer, value in zip(layers, stats):
                layer.collect = [] if layer.prior < 1.0 else None
                layer.case_stats = value
            with torch.no_grad():
                run()
            new: list[CaseStats | None] = []
            for layer in layers:
                if layer.collect is None:
                    new.append(None)
                    continue
                if not layer.collect:
                    raise ValueError("a normalisation layer saw no input during the statistics pass.")
                count, mean, m2 = layer.collect
                new.append((mean.float(), (m2 / count).float(), int(count)))
            stats = new
        finally:
            for layer in layers:
                layer.collect = None
                layer.case_stats = None
    return stats


def captured_statistics(layers: Sequence[AdaptiveBatchNorm]) -> AbstractContextManager[None]:
    """Within the context, the first forward of each layer that uses its input's statistics (``prior < 1``) takes
    them from its input batch, as BatchNorm in training mode does (biased variance), but detached, and keeps them as
    its fixed case statistics for every later forward in the context; on exit the layers use their inputs' statistics
    again.

    When the first forward is one batch of all the parts of a case (e.g. the patches of a volume), every layer gets
    exactly the statistics BatchNorm in training mode computes on that batch, deep layers included (the statistics
    of a network normalised throughout with the pooled statistics), in one pass; and that forward, if it carries a
    gradient, gives the gradient of the fixed statistics (the statistics are constants).
    """
    return layer_settings(
        layers,
        [{"capture": layer.prior < 1.0, "case_stats": None} for layer in layers],
        on_exit={"capture": False, "case_stats": None},
    )
