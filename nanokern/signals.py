"""Ctrl-C and SIGTERM as one line: how many files are finished and kept, and how to resume.

`install()` (called first thing by the `nanokern` command) turns SIGINT and SIGTERM into an
`Interrupted` exception raised in the main thread, wherever it is: importing torch, planning, or
waiting on the writer threads. It derives from BaseException, so neither click ("Aborted!")
nor the `except Exception` of a conversion step swallows it. A conversion that is interrupted
fills in what it kept (`kept`, `total`, `work`), and the command prints `message()` and exits
with 128 + the signal number (130 for SIGINT, 143 for SIGTERM). A second signal while the first
is being handled ends the process at once, with the same exit code.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager


class Interrupted(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.kept: int | None = None  # files finished and kept in `work` (None: nothing started yet)
        self.total: int | None = None
        self.work: str | None = None
        self.finished: str | None = None  # the signal came while this output was being put in place


    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def message(self) -> str:
        name = signal.Signals(self.signum).name
        if self.finished is not None:
            return f"interrupted ({name}) while putting {self.finished} in place: it is complete"
        if self.kept is None:
            return f"interrupted ({name}) before writing anything: nothing kept; run the same command again"
        return (f"interrupted ({name}): {self.kept} of {self.total} file(s) finished and kept in {self.work}; "
                f"the same command resumes from them")


_raised = False
_deferred: list | None = None  # inside deferred(): signals received, raised when it ends


def _handler(signum, frame):
    global _raised
    if _raised:  # a second Ctrl-C while the first is being cleaned up: leave now
        os._exit(128 + signum)
    _raised = True
    if _deferred is not None:
        _deferred.append(signum)
        return
    raise Interrupted(signum)


@contextmanager
def deferred(what: str):
    """A step that must not stop half-way (the final rename): a signal received meanwhile is
    raised once it is done, saying that `what` is complete."""
    global _deferred
    outer, _deferred = _deferred, []
    try:
        yield
    finally:
        got, _deferred = _deferred, outer
    if got:
        e = Interrupted(got[0])
        e.finished = what
        raise e


def install() -> None:
    """SIGINT and SIGTERM raise Interrupted in the main thread."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _handler)
