"""The torchrun side of tests/test_live_faults.py (4 ranks, gloo, the TP2 x PP2 fixture): one
rank of a live call stops or fails, or calls alone, or calls something else; every case checks
what each rank sees and how long it took, then that the process groups still work. Prints
"FAIL ..." lines, "DELAY <case> <seconds>" (the slowest rank, failure to its NanokernError) and
"ALIVE <case> <rank>"; exit 1 on any failure. No test functions here."""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from test_live_worker import groups, reference, same

from nanokern import live
from nanokern.live import gather as gmod
from nanokern.live import stream

FAILS: list[str] = []


def check(ok: bool, what: str) -> None:
    if not ok:
        FAILS.append(f"FAIL rank {dist.get_rank()}: {what}")


class Stop(Exception):
    pass


KEPT: list = []  # exceptions kept, tracebacks and all (their frames keep what they held)


def packer(it, rank: int, bad: int, after: int, how: str) -> None:
    """A consumer that takes the iterator itself (as a packer does): its frame holds it."""
    for k, _ in enumerate(it):
        if rank == bad and k + 1 == after:
            packer.t = time.time()
            if how in ("raise", "packer"):
                raise Stop("the consumer failed")
            break


def consume(make, rank: int, bad: int, after: int, how: str):
    """Iterate make(); rank `bad` stops after `after` items (how: "break", "raise", or "packer":
    raise inside a function given the iterator, the exception kept, the iterator closed by
    contextlib.closing). Returns (error or None, the time this rank stopped or raised)."""
    try:
        if how == "packer":
            with contextlib.closing(make()) as it:
                packer(it, rank, bad, after, how)
        else:
            packer(make(), rank, bad, after, how)
        return None, getattr(packer, "t", None) if rank == bad else time.time()
    except Stop as e:
        if how == "packer":
            KEPT.append(e)
        return None, packer.t
    except live.NanokernError as e:
        return e, time.time()


def one_stops(name: str, make, bad: int, after: int, how: str) -> None:
    """Every rank iterates make(); rank `bad` stops. The others raise a NanokernError naming it."""
    rank = dist.get_rank()
    err, t = consume(make, rank, bad, after, how)
    times = [None] * dist.get_world_size()
    dist.all_gather_object(times, (t, None if err is None else str(err)))  # (the groups still work)
    t_fail = times[bad][0]
    if rank == bad:
        check(err is None, f"{name}: the stopping rank raised {err}")
        print(f"ALIVE {name} {rank}", flush=True)
        delays = [tr - t_fail for r, (tr, _) in enumerate(times) if r != bad]
        print(f"DELAY {name} {max(delays):.4f}", flush=True)
        return
    check(err is not None and f"rank {bad} stopped iterating" in str(err) and "\n" not in str(err),
          f"{name}: rank {bad} stopped, this rank saw {err!r}")
    check(t - t_fail < 30, f"{name}: raised {t - t_fail:.1f} s after rank {bad} stopped")


def save_fails(sh, kw: dict, out: Path) -> None:
    rank, bad = dist.get_rank(), 1
    fill, n = stream.fill, [0]

    def failing(*a):
        n[0] += 1
        if n[0] == 3:
            raise RuntimeError("injected kernel fault")
        fill(*a)

    if rank == bad:
        stream.fill = failing
    t0 = time.time()
    try:
        live.save_hf(sh, out / "save", max_shard_size="40KB", **kw)
        check(False, "save_hf went on after a rank failed")
    except RuntimeError as e:
        check(rank == bad and "injected" in str(e), f"save_hf: {e!r}")
    except live.NanokernError as e:
        check(rank != bad and f"rank {bad} failed: injected kernel fault" in str(e) and "\n" not in str(e), f"save_hf: {e}")
    finally:
        stream.fill = fill
    waited = [None] * dist.get_world_size()
    dist.all_gather_object(waited, time.time() - t0)
    check(not (out / "save").exists(), "save_hf left a folder after a rank failed")
    if rank == bad:
        print(f"SAVE {max(waited):.2f}", flush=True)


def fails_inside_step(sh, kw: dict) -> None:
    rank, bad = dist.get_rank(), 1
    gather, n = gmod.Units._gather, [0]

    def failing(self, *a):
        n[0] += 1
        if n[0] == 4:
            raise MemoryError("injected allocation failure")
        return gather(self, *a)

    if rank == bad:
        gmod.Units._gather = failing
    t = time.time()
    try:
        for _ in live.hf_weights(sh, **kw):
            pass
        check(False, "inside a step: no error")
    except MemoryError:
        check(rank == bad, "inside a step: MemoryError elsewhere")
    except live.NanokernError as e:
        check(rank != bad and f"rank {bad} failed: injected allocation failure" in str(e), f"inside a step: {e}")
    t = time.time() - t
    gmod.Units._gather = gather
    times = torch.tensor([t], dtype=torch.float64)
    dist.all_reduce(times, op=dist.ReduceOp.MAX)  # (the world group)
    if rank == 0:
        print(f"INSIDE {float(times):.2f}", flush=True)


def main() -> None:
    dist.init_process_group("gloo")
    fx, ref_dir = sys.argv[1], sys.argv[2]
    rank = dist.get_rank()
    tpg, ppg = groups(2, 2)
    sh = live.load_rank(fx, dist.get_rank(tpg), dist.get_rank(ppg))
    kw = dict(tp_group=tpg, pp_group=ppg, dtype="bf16")
    cases = [
        ("break_all", lambda: live.hf_weights(sh, **kw), 3, 5, "break"),
        ("raise_buckets", lambda: live.hf_buckets(sh, bucket_bytes=1 << 15, **kw), 1, 2, "raise"),
        ("break_first_dest", lambda: live.hf_weights(sh, ranks=2, **kw), 2, 1, "break"),
        ("packer_closing", lambda: live.hf_weights(sh, **kw), 0, 7, "packer"),
    ]
    for case in cases:
        try:
            one_stops(*case)
        except Exception:  # noqa: BLE001
            FAILS.append(f"FAIL rank {rank}: {case[0]}: {traceback.format_exc()}")
        dist.barrier()
    # save_hf: one rank's kernel fails half way; the others stop at once, naming it
    save_fails(sh, kw, Path(sys.argv[3]))
    dist.barrier()
    # one rank calls alone (the others are elsewhere: here, a barrier after it)
    if rank == 0:
        t0 = time.time()
        try:
            live.hf_metadata(sh, timeout=3, **kw)
            check(False, "a call alone returned")
        except live.NanokernError as e:
            waited = time.time() - t0
            check("rank(s) 1 did not call" in str(e) and "\n" not in str(e), f"alone: {e}")
            check(3 <= waited < 30, f"alone: raised after {waited:.1f} s (timeout 3)")
            print(f"ALONE {waited:.2f} {e}", flush=True)
    dist.barrier()
    # ranks calling different functions: one line on every rank, at once
    t0 = time.time()
    try:
        if rank == 3:
            next(iter(live.hf_buckets(sh, **kw)))
        else:
            live.hf_metadata(sh, **kw)
        check(False, "different functions: no error")
    except live.NanokernError as e:
        check("called different things" in str(e) and "hf_buckets" in str(e) and time.time() - t0 < 30, f"mismatch: {e}")
        if rank == 0:
            print(f"MISMATCH {time.time() - t0:.2f} {e}", flush=True)
    dist.barrier()
    # a rank holds its iterator without closing it: the others raise after `timeout` between steps
    it = live.hf_weights(sh, timeout=2, **kw)
    t0 = time.time()
    try:
        for k, _ in enumerate(it):
            if rank == 3 and k == 2:
                time.sleep(8)  # (its next step would find the call aborted)
                break
        check(rank == 3, "a held iterator: no error")
    except live.NanokernError as e:
        check(rank != 3 or "did not reach" in str(e), f"held: {e}")
        check(rank == 3 or ("did not reach" in str(e) and time.time() - t0 < 30), f"held: {e}")
    del it
    dist.barrier()
    # after all that, a whole call on every rank still works and is exact
    want = reference(ref_dir)
    got = list(live.hf_weights(sh, **kw))
    check(len(got) == len(want) and all(same(t, want[n]) for n, t in got), "the call after the faults differs")
    # last (it leaves the TP and PP groups with a collective pending): a rank fails inside a
    # step, after the barrier, while the others are in its collectives
    fails_inside_step(sh, kw)
    ok = torch.tensor([len(FAILS)])
    for line in FAILS:
        print(line, flush=True)
    dist.all_reduce(ok)  # (the world group: untouched)
    if rank == 0:
        print(f"fault checks: {int(ok)} failure(s)", flush=True)
    sys.stdout.flush()
    os._exit(1 if int(ok) else 0)  # (no destroy_process_group: it would wait for the pending collective)


if __name__ == "__main__":
    main()
