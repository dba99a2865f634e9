"""Ctrl-C and SIGTERM as one line: how many files are finished and kept, and how to resume.

`install()` (called first thing by the `nanokern` command) handles SIGINT and SIGTERM:
- while starting up (imports, planning: nothing written yet) the process prints one line and
  leaves at once, after the registered clean-ups (the output lock's file). Raising there is not
  safe: an exception thrown into the middle of `import torch` comes out as some other error;
- inside `raising()` (execute's writing) they raise `Interrupted` in the main thread. It derives
  from BaseException, so neither click ("Aborted!") nor an `except Exception` swallows it; the
  conversion fills in what it kept (`kept`, `total`, `work`) and the command prints `message()`;
- inside `deferred()` (the final rename) they wait for the step to end, then raise.
The exit code is 128 + the signal number (130 for SIGINT, 143 for SIGTERM). A second signal
while the first is being handled ends the process at once, with the same exit code.
"""

from __future__ import annotations

import os
import signal
import sys
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
            return f"interrupted ({name}) after {self.finished} was put in place: it is complete"
        if self.kept is None:
            return f"interrupted ({name}) before writing anything: nothing kept; run the same command again"
        return (f"interrupted ({name}): {self.kept} of {self.total} file(s) finished and kept in {self.work}; "
                f"the same command resumes from them")


_raised = False
_deferred: list | None = None  # inside deferred(): signals received, raised when it ends
_raising = 0  # > 0 inside raising()
_complete: str | None = None  # an output finished by this process (said by a signal after it)
_cleanups: dict[int, object] = {}  # run before leaving at once


def _handler(signum, frame):
    global _raised
    if _raised:  # a second Ctrl-C while the first is being cleaned up: leave now
        os._exit(128 + signum)
    _raised = True
    if _deferred is not None:
        _deferred.append(signum)
        return
    if _raising:
        raise Interrupted(signum)
    for fn in list(_cleanups.values()):
        try:
            fn()
        except Exception:  # noqa: BLE001 - leaving anyway
            pass
    e = Interrupted(signum)
    e.finished = _complete
    leave(signum, e.message())


def leave(signum: int, line: str):
    """End the process at once after a signal: what stdout holds is flushed, `line` goes to stderr
    (rank 0 only), exit 128 + the signal number. Nothing else runs (no atexit, no finally)."""
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001 - leaving anyway
        pass
    if int(os.environ.get("RANK", "0")) == 0:
        os.write(2, (line + "\n").encode())
    os._exit(128 + signum)


def at_quick_exit(fn) -> int:
    """Run fn() if a signal ends the process while starting up; returns a key for forget()."""
    key = id(fn)
    _cleanups[key] = fn
    return key


def forget(key: int) -> None:
    _cleanups.pop(key, None)


def completed(what: str) -> None:
    """`what` is complete: a signal from now on says so."""
    global _complete
    _complete = what


@contextmanager
def raising():
    """Signals raise Interrupted in the main thread inside this block."""
    global _raising
    _raising += 1
    try:
        yield
    finally:
        _raising -= 1


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
