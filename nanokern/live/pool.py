"""Output buffers that outlive the step: what hf_weights yields by default. Each tensor gets a
buffer of its own exact size; a buffer is filled again (for a later tensor of the same size)
only once nothing outside this module holds its storage (no tensor, view or numpy array of it
is alive). So a consumer that keeps what it is given keeps valid tensors.

Fresh buffers cost page faults on the host (first touch; large blocks are mapped and unmapped
by malloc each time), so a buffer the consumer has dropped is kept as a spare while a tensor of
its size is still to come, spares totalling at most the largest tensor. Memory for a consumer
that drops each tensor by the step after: the tensor its loop variable still names, the one
being filled, and the spares: at most 3 x the largest tensor.
"""

from __future__ import annotations

from collections import deque

from nanokern.live.gather import Budget


def _uses(t) -> int | None:
    """How many tensors (and storage objects) share t's storage; None where torch cannot say."""
    import torch

    count = getattr(torch._C, "_storage_Use_Count", None)
    return None if count is None else count(t.untyped_storage()._cdata)


class Recycler:
    """Buffers handed out by take(), one per size of `sizes` in turn (the wanted tensors' bytes,
    in order), counted in `budget` while this module holds them."""

    def __init__(self, budget: Budget, device, sizes: list[int]):
        self.budget, self.device = budget, device
        self.held: list[tuple[object, int | None]] = []  # (buffer, its use count when nothing else held it)
        self.when: dict[int, deque] = {}  # size -> the positions still to come that need it
        for i, n in enumerate(sizes):
            self.when.setdefault(n, deque()).append(i)
        self.cap = max(sizes, default=0)
        self.pos = 0
        self.allocations = 0

    def _next(self, nbytes: int) -> float:
        q = self.when.get(nbytes)
        while q and q[0] < self.pos:
            q.popleft()
        return q[0] if q else float("inf")

    def take(self, nbytes: int):
        """A uint8 buffer of nbytes that nothing else references: a free one of that size, or new."""
        found, keep, free = None, [], []
        for buf, alone in self.held:
            if alone is not None and _uses(buf) != alone:
                keep.append((buf, alone))  # still held outside: never filled again
            elif found is None and alone is not None and buf.numel() == nbytes:
                found = (buf, alone)
            else:
                free.append((buf, alone))
        self.pos += 1
        spare = 0
        for buf, alone in sorted(free, key=lambda x: self._next(x[0].numel())):
            if alone is not None and self._next(buf.numel()) < float("inf") and spare + buf.numel() <= self.cap:
                keep.append((buf, alone))  # a spare: a tensor of its size is still to come
                spare += buf.numel()
            else:  # free (or, where torch cannot count, left to the consumer): no longer ours
                self.budget.free(buf)
        if found is None:
            buf = self.budget.alloc(nbytes, self.device)
            self.allocations += 1
            found = (buf, _uses(buf))
        self.held = [*keep, found]
        return found[0]

    def close(self) -> None:
        """Stop tracking: the consumer's tensors stay valid (its references keep them)."""
        for buf, _ in self.held:
            self.budget.free(buf)
        self.held = []
