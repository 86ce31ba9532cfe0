"""VPTTA's memory bank (methods spec §3.4).

:class:`PromptMemory` is the key-value bank that initialises the prompt of a new image from the prompts learned on
the images whose low-frequency amplitudes were most similar (cosine similarity, top-k, softmax with a temperature).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["PromptMemory"]


class PromptMemory:
    """VPTTA's memory bank: low-frequency amplitude keys mapped to the prompts learned on those images.

    The bank lives on the device of the keys it is given (the GPU in a GPU run): keys and values are rows of two
    preallocated tensors of ``size + 1`` slots, and retrieval (cosine similarity, top-``k``, softmax weights, the
    weighted prompt) runs there. The only host read per case is the one the published algorithm needs: on
    :meth:`push`, whether the new key equals a stored one (the reference keys a Python dict by the key's bytes, so an
    identical key overwrites the earlier value and keeps its place in the FIFO order). The slot bookkeeping (FIFO
    order, count) is host-side Python, so :meth:`retrieve` and ``len`` never synchronise.

    - :meth:`push` stores a *copy* of the key and of the value (the reference stores a view of the live prompt when it
      runs on a CPU, so its stored prompts silently follow later updates; the published numbers come from GPU runs
      where ``.cpu()`` copies, which is what we do everywhere). Before inserting, if the bank holds more than
      ``size`` entries the oldest one is dropped, so the bank holds up to ``size + 1`` entries, as the reference.
    - :meth:`retrieve` returns ``None`` while the bank holds fewer than ``neighbors`` entries; otherwise the
      ``neighbors`` stored keys with the highest cosine similarity to the query (computed in float64, as the
      reference's NumPy code), and the weighted sum of their values with weights ``softmax(cos / temperature)``.

    Args:
        size: capacity (40 in VPTTA; the bank may hold ``size + 1``).
        neighbors: number of neighbours ``k`` (16 in VPTTA).
        temperature: softmax temperature (0.2 in VPTTA).

    Raises:
        ValueError: if ``size`` or ``neighbors`` is below 1 or ``temperature <= 0``.
    """

    def __init__(self, size: int = 40, neighbors: int = 16, temperature: float = 0.2) -> None:
        if size < 1 or neighbors < 1:
            raise ValueError(f"size and neighbors must be >= 1, got size={size}, neighbors={neighbors}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.size, self.neighbors, self.temperature = int(size), int(neighbors), float(temperature)
        self.reset()

    def __len__(self) -> int:
        return len(self._order)

    def reset(self) -> None:
        """Empty the bank (the slot tensors are allocated again by the next :meth:`push`)."""
        self._keys: torch.Tensor | None = None  # (size + 1, d) float32
        self._values: torch.Tensor | None = None  # (size + 1, *value shape)
        self._valid: torch.Tensor | None = None  # (size + 1,) bool, on the bank's device
        self._order: list[int] = []  # occupied slots, oldest first

    @property
    def device(self) -> torch.device | None:
        """The device the bank lives on (``None`` while it is empty and unallocated)."""
        return None if self._keys is None else self._keys.device

    def _allocate(self, key: torch.Tensor, value: torch.Tensor) -> None:
        slots = self.size + 1
        self._keys = torch.zeros(slots, key.numel(), dtype=torch.float32, device=key.device)
        self._values = torch.zeros(slots, *value.shape, dtype=value.dtype, device=key.device)
        self._valid = torch.zeros(slots, dtype=torch.bool, device=key.device)

    def _move_to(self, device: torch.device) -> None:
        if self._keys is not None and self._keys.device != device:
            self._keys, self._values, self._valid = (t.to(device) for t in (self._keys, self._values, self._valid))

    @property
    def keys(self) -> torch.Tensor:
        """The stored keys ``(n, d)``, oldest first (float32, on the bank's device)."""
        if self._keys is None or not self._order:
            return torch.zeros(0, 0)
        return self._keys[self._order].clone()

    @property
    def values(self) -> list[torch.Tensor]:
        """The stored values, oldest first (copies, on the bank's device)."""
        if self._values is None:
            return []
        return [self._values[i].clone() for i in self._order]

    def push(self, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store a copy of ``value`` under a copy of ``key`` (see the class docstring for eviction and overwrites).

        Raises:
            ValueError: if the key's or the value's size differs from the stored ones.
        """
        k = key.detach().reshape(-1).to(torch.float32)
        v = value.detach()
        if self._keys is None:
            self._allocate(k, v)
        self._move_to(k.device)
        if k.numel() != self._keys.shape[1] or tuple(v.shape) != tuple(self._values.shape[1:]):
            raise ValueError(
                f"key of size {k.numel()} / value of shape {tuple(v.shape)} do not match the bank's "
                f"{self._keys.shape[1]} / {tuple(self._values.shape[1:])}."
            )
        free = None
        if len(self._order) > self.size:
            free = self._order.pop(0)
            self._valid[free] = False
        same = (self._keys == k).all(dim=1) & self._valid
        hit = int(torch.where(same.any(), same.to(torch.int8).argmax(), -1))  # the one host read of a case
        if hit >= 0:
            self._values[hit].copy_(v)
            return
        slot = free if free is not None else next(i for i in range(self.size + 1) if i not in self._order)
        self._keys[slot].copy_(k)
        self._values[slot].copy_(v)
        self._valid[slot] = True
        self._order.append(slot)

    def _similarity(self, key: torch.Tensor) -> torch.Tensor:
        """Cosine similarity (float64) of ``key`` to every slot; ``-inf`` for the empty slots."""
        self._move_to(key.device)
        query = key.detach().reshape(-1).to(self._keys.device, torch.float32).double()
        if self._keys.shape[1] != query.numel():
            raise ValueError(
                f"key of size {query.numel()} does not match the stored keys of size {self._keys.shape[1]}."
            )
        stored = self._keys.double()
        cosine = stored @ query / (stored.norm(dim=1) * query.norm()).clamp_min(1e-12)
        return cosine.masked_fill(~self._valid, float("-inf"))

    def neighbours(self, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices (into :attr:`keys`, oldest first) of the ``neighbors`` most similar keys, and their softmax weights.

        Raises:
            ValueError: if the bank holds fewer than ``neighbors`` entries.
        """
        if len(self) < self.neighbors:
            raise ValueError(f"the bank holds {len(self)} entries, fewer than neighbors={self.neighbors}.")
        cosine = self._similarity(key)
        top = torch.topk(cosine, self.neighbors)
        position = {slot: i for i, slot in enumerate(self._order)}
        index = torch.tensor([position[int(s)] for s in top.indices.cpu()])
        return index, torch.softmax(top.values / self.temperature, dim=0)

    def retrieve(self, key: torch.Tensor) -> torch.Tensor | None:
        """The softmax-weighted sum of the values of the nearest keys, or ``None`` while ``len < neighbors``.

        Runs on the bank's device without a host synchronisation.
        """
        if len(self) < self.neighbors:
            return None
        top = torch.topk(self._similarity(key), self.neighbors)
        weights = torch.softmax(top.values / self.temperature, dim=0)
        chosen = self._values[top.indices].double()
        out = (weights.view(-1, *([1] * (chosen.dim() - 1))) * chosen).sum(dim=0)
        return out.to(self._values.dtype)

    def state_dict(self) -> dict[str, Any]:
        """The bank's content (keys oldest first, values, settings), on the CPU, for checkpoints."""
        return {
            "size": self.size,
            "neighbors": self.neighbors,
            "temperature": self.temperature,
            "keys": [k.cpu() for k in self.keys] if self._order else [],
            "values": [v.cpu() for v in self.values],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the content written by :meth:`state_dict` (the settings are taken from ``state``).

        The bank is restored on the CPU and moves to the device of the first key it is given afterwards.
        """
        self.size, self.neighbors = int(state["size"]), int(state["neighbors"])
        self.temperature = float(state["temperature"])
        self.reset()
        for k, v in zip(state["keys"], state["values"]):
            self.push(torch.as_tensor(k), torch.as_tensor(v))
