"""Multi-process execution under torchrun / srun: who writes which output file.

The plan is split by output file with balanced bytes (largest first, onto the least-loaded
rank: deterministic, so every rank computes the same split without talking).
"""

from __future__ import annotations

import os


def world() -> tuple[int, int]:
    """(rank, world size) from torch.distributed's environment (torchrun, or srun with it set)."""
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, ws


def init(device: str):
    """Initialise the process group when launched with several processes; None otherwise."""
    rank, ws = world()
    if ws <= 1:
        return None
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        _owned.append(dist)
    return dist


_owned: list = []  # the process group nanokern made (a caller's own group is the caller's to close)


def close() -> None:
    """Destroy the process group nanokern made, once the command is done and every rank has
    passed its last collective. Left to the interpreter's teardown, gloo's worker threads are
    destroyed while still joinable: std::terminate, SIGABRT ("terminate called without an
    active exception"), now and then, on any rank."""
    while _owned:
        _owned.pop().destroy_process_group()


def owned() -> bool:
    return bool(_owned)


def gather(dist, obj) -> list:
    """Every rank's obj, in rank order."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def split_by_bytes(sizes: list[int], ranks: int) -> list[list[int]]:
    """Indices of items per rank, balancing the sum of sizes (LPT greedy)."""
    load = [0] * ranks
    parts: list[list[int]] = [[] for _ in range(ranks)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        r = min(range(ranks), key=lambda r: (load[r], r))
        parts[r].append(i)
        load[r] += sizes[i]
    return parts
