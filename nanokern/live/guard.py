"""The side channel that keeps a live call from hanging: a key-value store every rank reaches
(torch.distributed's default store; comm.py hands it over), used three ways.

1. The start handshake: every rank publishes (function, its arguments) under its TP group, then
   under its PP group (so the whole grid is known without a world group), and waits at most
   `timeout` seconds for the others. A rank calling alone, or ranks calling different
   functions or with different arguments, get one NanokernError, not a hang in a collective.
2. A barrier before each collective step (Guard.sync). No rank enters a collective before every
   rank has reached it, so a rank that stops between two steps (its consumer raised, or broke
   out of the loop) leaves nobody inside a collective.
3. An abort: a rank that stops or fails sets its message (first message wins) and releases the
   barrier the others wait at with "abort": they wake at once and raise its message.

Keys: nanokern/live/g/<group>/<n>/<rank> for the handshake (a rank deletes its key of call n-1
once call n is complete: by then every member has read it); nanokern/live/c/<nonce>/ for one
call's barriers (grid rank 0 deletes barrier m-1's keys once past barrier m, and the last
ones at its next call's start) and message.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
import secrets
import time
from datetime import timedelta

from nanokern.errors import NanokernError

ROOT = "nanokern/live/"
_SEQ: dict[str, int] = {}  # per group: this process's completed handshakes
_LAST: dict[str, object] = {}  # per grid: the call whose keys go at the next call (grid rank 0)


class Aborted(NanokernError):
    """Another rank of the call stopped or failed (its message), or the call stalled."""


def _poll(ready, deadline: float | None) -> bool:
    """Call ready() until it is true (True) or the deadline passes (False); sleeps grow to 10 ms."""
    pause = 0.0002
    while not ready():
        if deadline is not None and time.monotonic() > deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.01)
    return True


def gather(store, members: list[int], me: int, payload, fn: str, timeout: float) -> list:
    """[payload of each member] (in `members` order), through the store; NanokernError naming
    the members that did not publish within timeout seconds (their call is not counted)."""
    if len(members) == 1:
        return [payload]
    gid = hashlib.sha1(",".join(map(str, members)).encode()).hexdigest()[:16]
    seq = _SEQ.get(gid, 0)
    base = f"{ROOT}g/{gid}/{seq}/"
    keys = [f"{base}{m}" for m in members]
    store.set(f"{base}{me}", pickle.dumps(payload))
    if not _poll(lambda: store.check(keys), time.monotonic() + timeout):
        missing = [m for m, k in zip(members, keys) if not store.check([k])]
        store.delete_key(f"{base}{me}")
        raise NanokernError(f"nanokern.live.{fn}: rank(s) {', '.join(map(str, missing))} did not call nanokern.live within "
                            f"{timeout:g} s (every rank of the TP x PP grid calls the same function, in the same order)")
    out = [pickle.loads(store.get(k)) for k in keys]
    if seq:
        store.delete_key(f"{ROOT}g/{gid}/{seq - 1}/{me}")
    _SEQ[gid] = seq + 1
    return out


class Guard:
    """One call's barriers and abort flag, shared by the `world` ranks of its grid. Barrier m:
    each rank adds 1 to <call>/n<m>; the last to arrive sets <call>/go<m> to "go"; the others
    wait on that key (the store wakes them). A rank that stops sets go<m> to "abort" (first
    value wins) for the barrier the others can be at, so they wake and raise its message."""

    def __init__(self, store, key: str, world: int, rank: int, fn: str, step_timeout: float | None, leader: bool):
        self.store, self.key, self.world, self.rank, self.fn = store, key, world, rank, fn
        self.step_timeout, self.leader = step_timeout, leader
        self.n = 0  # barriers reached

    def sync(self) -> None:
        """Wait until every rank of the grid is here (raise Aborted if one stopped or failed)."""
        self.n += 1
        go = f"{self.key}go{self.n}"
        if self.store.add(f"{self.key}n{self.n}", 1) == self.world:
            self.store.compare_set(go, "", "go")
        with contextlib.suppress(Exception):  # (a timeout: the key is still missing)
            self.store.wait([go], timedelta(seconds=self.step_timeout))
        if not self.store.check([go]):
            self.abort(f"nanokern.live.{self.fn}: a rank did not reach step {self.n} within {self.step_timeout:g} s (rank "
                       f"{self.rank} waited; a rank stalled, or holds its iterator without closing it)")
        if self.store.get(go) != b"go":
            raise Aborted(self.message())
        if self.leader and self.n > 1:  # every rank has left barrier n - 1
            self.store.delete_key(f"{self.key}n{self.n - 1}")
            self.store.delete_key(f"{self.key}go{self.n - 1}")

    def wait_work(self, work) -> None:
        """Wait for a started collective in slices of 50 ms, looking for another rank's abort
        between them (the collective is then left pending: the process group is not usable
        after that abort). A slice that ends early is the work done (or failed: re-raised)."""
        while True:
            try:
                work.wait(timedelta(seconds=0.05))
                return
            except Exception:  # noqa: BLE001 - a slice's "timed out", or the work's own error
                if work.is_completed():
                    work.wait()  # (its error)
                    return
            if self.store.check([self.key + "why"]):
                raise Aborted(self.message())

    def message(self) -> str:
        _poll(lambda: self.store.check([self.key + "why"]), time.monotonic() + 5)
        if not self.store.check([self.key + "why"]):
            return f"nanokern.live.{self.fn}: another rank stopped"
        return self.store.get(self.key + "why").decode()

    def abort(self, why: str) -> None:
        """Stop every rank of the call: the first message set is the one they all raise."""
        self.store.compare_set(self.key + "why", "", why)
        for m in (self.n, self.n + 1):  # the barrier this rank is at or passed, and the next one
            self.store.compare_set(f"{self.key}go{m}", "", "abort")
        raise Aborted(self.message())

    def keys(self) -> list[str]:
        """What this call leaves in the store once every rank is done with it."""
        return [self.key + "why"] + [f"{self.key}{k}{m}" for m in (self.n - 1, self.n, self.n + 1) for k in ("n", "go")]


def start(store, tp_members: list[int], pp_members: list[int], me: int, fn: str, args, timeout: float,
          step_timeout: float | None) -> Guard:
    """The handshake (TP group, then PP group), then this call's Guard."""
    call = (fn, args)
    row = gather(store, tp_members, me, (me, call, secrets.token_hex(8)), fn, timeout)
    grid = [x for r in gather(store, pp_members, me, row, fn, timeout) for x in r]
    odd = next((x for x in grid if x[1] != grid[0][1]), None)
    if odd is not None:
        raise NanokernError(f"nanokern.live: ranks called different things: rank {grid[0][0]} {_show(grid[0][1])}, rank {odd[0]} "
                            f"{_show(odd[1])} "
                            f"(every rank of the grid calls the same function with the same arguments, in the same order)")
    name = "-".join(str(x[0]) for x in grid)
    leader = me == grid[0][0]
    guard = Guard(store, f"{ROOT}c/{grid[0][2]}/", len(grid), me, fn, step_timeout, leader)
    if leader:  # the previous call of this grid is over on every rank: its keys go
        old = _LAST.pop(name, None)
        for k in old.keys() if old is not None else ():
            store.delete_key(k)
        _LAST[name] = guard
    return guard


def _show(call) -> str:
    fn, args = call
    return f"{fn}({', '.join(f'{k}={v!r}' for k, v in args)})"


@contextlib.contextmanager
def watching(guard: Guard | None):
    """Around a call's body: a rank that stops iterating (GeneratorExit: a break, or its consumer
    raised) or fails stops every other rank of the call (they raise its message)."""
    try:
        yield
    except Aborted:
        raise  # (another rank's message, already set)
    except GeneratorExit:
        if guard is not None:
            with contextlib.suppress(Aborted):
                guard.abort(f"nanokern.live.{guard.fn}: rank {guard.rank} stopped iterating (a break, or its consumer "
                            f"raised): every rank of the call stops")
        raise
    except BaseException as e:
        if guard is not None:
            with contextlib.suppress(Aborted):
                guard.abort(f"nanokern.live.{guard.fn}: rank {guard.rank} failed: {e}".replace("\n", " "))
        raise
