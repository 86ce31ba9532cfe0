"""Checkpoints of an adapter's state for one network, so that an interrupted continual run resumes exactly.

A checkpoint holds what the adapter changes while it runs: the updated parameters, the optimizer state, the step and
warm-up counters, the numeric method state (e.g. SAR's entropy average), the random generator of its augmentations and
the domain it last saw (the ``"domain"`` setting resets when it changes). A method with more state of its own provides
``state_dict(network)`` / ``load_state_dict(network, values)`` (VPTTA: prompt and memory bank), used instead of the
generic part. Everything is plain tensors, numbers and strings, so ``torch.load(..., weights_only=True)`` reads it.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from monai_tta.adapters.base import Adapter

__all__ = ["adapter_state_dict", "load_adapter_state_dict"]

_PLAIN = (bool, int, float, str, torch.Tensor)


def adapter_state_dict(adapter: Adapter, network: nn.Module) -> dict[str, Any]:
    """Everything ``adapter`` keeps for ``network``, on the CPU.

    Args:
        adapter: the adapter.
        network: the adapted network.
    """
    if hasattr(adapter, "state_dict"):
        method = adapter.state_dict(network)
    else:
        state = adapter.state_for(network)
        method = {
            "params": [p.detach().cpu().clone() for p in state.params],
            "optimizer": copy.deepcopy(state.optimizer.state_dict()) if state.optimizer is not None else None,
            "step": int(state.step),
            "seen": int(state.seen),
            "extra": {str(k): v for k, v in state.extra.items() if isinstance(v, _PLAIN)},
        }
    domain = adapter._domain
    return {
        "method": method,
        "generator": adapter.generator.get_state(),
        "domain": domain if domain is None or isinstance(domain, (str, int, float)) else str(domain),
        "pending_reset": bool(adapter._pending_reset),
    }


@torch.no_grad()
def load_adapter_state_dict(adapter: Adapter, network: nn.Module, values: dict[str, Any]) -> None:
    """Restore what :func:`adapter_state_dict` returned.

    Raises:
        ValueError: if the checkpoint's parameters do not match the adapter's on ``network`` (another method or
            network wrote it).
    """
    method = values["method"]
    if hasattr(adapter, "load_state_dict"):
        adapter.load_state_dict(network, method)
    else:
        state = adapter.state_for(network)
        saved = method["params"]
        shapes = [tuple(p.shape) for p in state.params]
        if [tuple(v.shape) for v in saved] != shapes:
            raise ValueError(
                f"the checkpoint holds {len(saved)} parameters that do not match the {len(shapes)} the adapter "
                f"{type(adapter).__name__} updates on this network; it was written by another method or network: "
                "delete it or use another output folder."
            )
        for p, v in zip(state.params, saved):
            p.copy_(v.to(p.device))
        if method["optimizer"] is not None and state.optimizer is not None:
            state.optimizer.load_state_dict(method["optimizer"])
        state.step, state.seen = int(method["step"]), int(method["seen"])
        state.extra.update(method["extra"])
    adapter.generator.set_state(values["generator"])
    adapter._domain = values["domain"]
    adapter._pending_reset = bool(values["pending_reset"])
