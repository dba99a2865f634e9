"""Which step to export next (rank 0): a step is ready when it is complete on disk (steps.verdict)
and its files are the same as at the previous look (no file added, grown or rewritten since),
so neither a pause in the writing nor a writer this code has never seen is taken for the end of
a save. A step that stays incomplete and unchanged for `give_up` seconds is reported failed once,
naming the file. Cheap when idle: one scandir of CHECKPOINTS_PATH per poll, and a walk only of
the steps not yet decided.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from nanokern.formats.nanotron import steps as S


@dataclass
class Seen:
    signature: str
    since: float  # monotonic time the step was first seen with this signature
    verdict: S.Verdict | None = None  # for this signature


@dataclass
class Decision:
    ready: list[S.Step] = field(default_factory=list)  # oldest first
    give_up: list[tuple[S.Step, S.Verdict]] = field(default_factory=list)
    waiting: list[tuple[S.Step, S.Verdict | None]] = field(default_factory=list)  # still being written
    links: list[str] = field(default_factory=list)  # symlinks named like steps: never exported


class Scheduler:
    def __init__(self, root: Path, every: int | None, give_up: float):
        self.root, self.every, self.give_up = root, every, give_up
        self.seen: dict[str, Seen] = {}
        self.done: set[str] = set()  # exported, failed or skipped: not looked at again by this watch

    def candidates(self, links: list[str] | None = None) -> list[str]:
        names = [n for n in S.step_names(self.root, links) if n not in self.done]
        return [n for n in names if not self.every or int(n) % self.every == 0]

    def look(self, once: bool = False) -> Decision:
        """once: a single look (--once): ready when complete and unchanged across the check;
        a step that looks complete (its last file written) but is not is given up at once."""
        d = Decision()
        now = time.monotonic()
        for name in self.candidates(d.links):
            st = S.Step(name, int(name), self.root / name)
            try:
                S.observe(st)
            except FileNotFoundError:
                self.seen.pop(name, None)
                continue
            prev = self.seen.get(name)
            if prev is None or prev.signature != st.signature:
                self.seen[name] = Seen(st.signature, now)
                if not once:  # changed since the last look: still being written
                    d.waiting.append((st, None))
                    continue
            cur = self.seen[name]
            if cur.verdict is None:
                cur.verdict = S.verdict(st.path)
                if once:
                    sig = st.signature
                    try:
                        S.observe(st)
                    except FileNotFoundError:
                        continue
                    if st.signature != sig:  # changed while being checked
                        self.seen[name] = Seen(st.signature, now)
                        d.waiting.append((st, None))
                        continue
            v = cur.verdict
            if v.complete:
                d.ready.append(st)
            elif (once and v.looks_complete) or (not once and now - cur.since >= self.give_up):
                d.give_up.append((st, v))
            else:
                d.waiting.append((st, v))
        return d

    def forget(self, name: str) -> None:
        """Look at this step afresh (an export of it failed for a reason that may pass)."""
        self.seen.pop(name, None)

    def reopen(self, name: str) -> None:
        """Look at this step again (it was exported, and has been saved again since)."""
        self.done.discard(name)
        self.seen.pop(name, None)

    def close(self, name: str) -> None:
        self.done.add(name)
        self.seen.pop(name, None)
