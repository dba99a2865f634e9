"""The KV cache of the native decoder: per decoder layer, per TP rank, that rank's own kv heads
(GQA: nkv_r heads, shared by its q heads; never repeated per q head).

- A full-attention layer: a preallocated [B, capacity, nkv_r, d] buffer; slot j holds position j.
- A sliding-window layer (window w): a rolling [B, r, nkv_r, d] ring of r = min(w, capacity)
  slots (a window longer than the whole generation never evicts anything); position p lives in
  slot p mod r, and `pos` records each slot's position (-1: empty), which the attention masks
  with. Until the ring is full, only its filled slots are attended over.

Fault injection (negative controls): "cache_slot" writes each decode step's k/v one slot past
its position (a full-attention layer then sees an empty slot where its own key should be).
"""

from __future__ import annotations

import torch


class LayerCache:
    def __init__(self, batch: int, n_kv: int, head_dim: int, capacity: int, window: int | None, dtype, device,
                 fault: str | None = None):
        self.window = window
        size = min(window, capacity) if window is not None else capacity + 1  # + 1: room for the "cache_slot" fault
        self.size = size
        self.k = torch.zeros(batch, size, n_kv, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.pos = torch.full((size,), -1, dtype=torch.int64, device=device)
        self.length = 0  # tokens written so far
        self.fault = fault

    def store(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor) -> None:
        """Keep the new tokens' k/v [B, T, nkv, d] at positions pos [T] = length..length+T-1 (a
        window keeps the last w)."""
        T = k.shape[1]
        if self.window is None:
            s = self.length + (1 if self.fault == "cache_slot" and self.length > 0 else 0)
            self.k[:, s:s + T] = k
            self.v[:, s:s + T] = v
            self.pos[s:s + T] = pos
        elif T == 1:  # a decode step: one slot, by Python arithmetic
            s = self.length % self.size
            self.k[:, s] = k[:, 0]
            self.v[:, s] = v[:, 0]
            self.pos[s] = self.length
        else:
            n = min(T, self.size)
            slots = pos[T - n:] % self.size
            self.k[:, slots] = k[:, T - n:]
            self.v[:, slots] = v[:, T - n:]
            self.pos[slots] = pos[T - n:]
        self.length += T

    def attend(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor):
        """Store the new tokens and return (keys, values, key positions) their queries attend over:
        the whole written part of a full cache (key positions None when one query sees every
        slot: no mask is needed); a ring after its update when one token comes (the slot it
        evicts is the position that just left the window), else the ring before the update and
        the new tokens (earlier queries of the chunk still need the keys the update evicts)."""
        if self.window is None:
            self.store(k, v, pos)
            n = self.length
            kp = None if k.shape[1] == 1 else torch.arange(n, device=self.pos.device)
            return self.k[:, :n], self.v[:, :n], kp
        n = min(self.length, self.size)  # filled slots: 0..n-1 until the ring is full
        if k.shape[1] == 1:
            self.store(k, v, pos)
            n = min(self.length, self.size)
            return self.k[:, :n], self.v[:, :n], self.pos[:n]
        keys, vals, kpos = torch.cat([self.k[:, :n], k], 1), torch.cat([self.v[:, :n], v], 1), torch.cat([self.pos[:n], pos])
        self.store(k, v, pos)
        return keys, vals, kpos


class KVCache:
    """layers[i][r]: layer i's cache on TP rank r."""

    def __init__(self, layers: list[list[LayerCache]]):
        self.layers = layers

    @property
    def length(self) -> int:
        return self.layers[0][0].length if self.layers else 0

    def nbytes(self) -> int:
        return sum(c.k.numel() * c.k.element_size() * 2 for layer in self.layers for c in layer)
