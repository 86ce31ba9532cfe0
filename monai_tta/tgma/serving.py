"""Serving TGMA's adapted target model: a 2D slice network applied to whole volumes, and its checkpoint.

TGMA adapts offline (``configs/adapt.json`` of the bundle): the target model of a held-out site is the weighted
ensemble of the adapted main and auxiliary source models (:class:`~monai_tta.tgma.WeightedEnsemble`), saved by the
runner in ``<output_dir>/<site>/target_model.pt``. To serve it as a plain MONAI bundle (``inference.json``, MONAI Label,
the Model Zoo's checks), :class:`SliceWiseNetwork` makes the 2D ensemble a volume network (the metadata then
describes volumes, what MONAI Label sends) and :func:`save_target_model` writes its weights as ``models/model.pt``.
By default (issue 18) the served 2D network is :class:`~monai_tta.tgma.GuardedEnsemble`: the adapted ensemble and
TGMA before adaptation (the untouched selected sources, the same weights), the choice made per call, i.e. per volume
(``SimpleInferer`` on one volume, as ``inference.json`` and MONAI Label run it); ``model.pt`` then holds both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from monai_tta.io import atomic_save
from monai_tta.tgma.guarded import GuardedEnsemble

__all__ = ["SliceWiseNetwork", "save_target_model"]


class SliceWiseNetwork(nn.Module):
    """Apply a 2D network to every slice of a volume along its last spatial axis.

    ``(B, C, H, W, D) -> (B, C', H, W, D)``: the ``B * D`` slices go through ``net`` as one batch, as MONAI's
    ``SliceInferer`` with ``spatial_dim=2`` and a batch of all slices would do (the network is in ``eval`` mode when
    served, so the slices do not interact).

    Args:
        net: a 2D network ``(N, C, H, W) -> (N, C', H, W)``.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w, d = x.shape
        slices = x.permute(0, 4, 1, 2, 3).reshape(b * d, c, h, w)
        out = self.net(slices)
        return out.reshape(b, d, out.shape[1], h, w).permute(0, 2, 3, 4, 1)


def save_target_model(
    target_model: str | os.PathLike,
    network: SliceWiseNetwork,
    path: str | os.PathLike,
    sources: Mapping[str, nn.Module] | None = None,
) -> Path:
    """Load the adapted ensemble of a TGMA run (``target_model.pt``) into ``network.net`` and save the state dict of
    ``network`` (what ``inference.json``'s ``network_def`` loads) to ``path``, atomically.

    When ``network.net`` is a :class:`~monai_tta.tgma.GuardedEnsemble`, the adapted ensemble goes into its ``target``
    and the untouched selected sources (``sources[name]`` for the run's selected names), with the same weights, into
    its ``source``.

    Args:
        target_model: the run's ``target_model.pt``.
        network: the served network (its ``net`` a ``WeightedEnsemble`` or a ``GuardedEnsemble``).
        path: where to write the state dict.
        sources: ``{site: source model}`` of the run (needed for a ``GuardedEnsemble``).

    Raises:
        FileNotFoundError: if ``target_model`` does not exist (run the adaptation first).
        ValueError: if a ``GuardedEnsemble`` is served without the run's selected source models.
    """
    target_model = Path(target_model)
    if not target_model.is_file():
        raise FileNotFoundError(f"TGMA target model {target_model} not found: run the adaptation (configs/adapt.json).")
    saved = torch.load(target_model, map_location="cpu", weights_only=True)
    if isinstance(network.net, GuardedEnsemble):
        names = list(saved["names"])
        missing = [n for n in names if sources is None or n not in sources]
        if missing:
            raise ValueError(
                f"the guarded TGMA model needs the untouched source models {missing} of the run {target_model}: pass "
                "them as sources (the bundle's @sources), or serve the ensemble without the guard."
            )
        untouched = {"weights": saved["ensemble"]["weights"]}
        for j, name in enumerate(names):
            untouched.update({f"members.{j}.{k}": v for k, v in sources[name].state_dict().items()})
        network.net.target.load_state_dict(saved["ensemble"])
        network.net.source.load_state_dict(untouched)
    else:
        network.net.load_state_dict(saved["ensemble"])
    return atomic_save({k: v.detach().cpu() for k, v in network.state_dict().items()}, path)
