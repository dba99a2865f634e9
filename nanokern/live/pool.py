"""Output buffers that outlive the step: what hf_weights yields by default. Each tensor gets a
buffer of its own exact size; a buffer is filled again (for a later tensor of the same size)
only once nothing outside this module holds its storage (no tensor, view or numpy array of it
is alive), and one no longer held and not reused is freed. So a consumer that keeps what it is
given keeps valid tensors, and one that drops each tensor costs at most two buffers: the one its
loop variable still names while the next is filled, and that next one.
"""

from __future__ import annotations

from nanokern.live.gather import Budget


def _uses(t) -> int | None:
    """How many tensors (and storage objects) share t's storage; None where torch cannot say."""
    import torch

    count = getattr(torch._C, "_storage_Use_Count", None)
    return None if count is None else count(t.untyped_storage()._cdata)


class Recycler:
    """Buffers handed out by take(nbytes), counted in `budget` while this module holds them."""

    def __init__(self, budget: Budget, device):
        self.budget, self.device = budget, device
        self.held: list[tuple[object, int | None]] = []  # (buffer, its use count when nothing else held it)
        self.allocations = 0

    def take(self, nbytes: int):
        """A uint8 buffer of nbytes that nothing else references: a free one of that size, or new."""
        found, keep = None, []
        for buf, alone in self.held:
            if alone is not None and _uses(buf) != alone:
                keep.append((buf, alone))  # still held outside: never filled again
            elif found is None and alone is not None and buf.numel() == nbytes:
                found = (buf, alone)
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
