"""Finished output files, made durable in batches and only then journaled as finished, so that a
resume never trusts a file that is not on disk (execute/run.py).

DURABILITY "syncfs" (durable.py): one syncfs of the output's filesystem makes a whole batch
durable. It runs on a thread of its own, so a writer never waits for the disk's cache flush:
files that finish while a sync runs wait for the next one (a group commit), and a batch is due
once SYNC_BYTES or SYNC_EVERY seconds of finished files are pending, and no sooner than
SYNC_SPACING times the last sync's own duration after it (durable.batch_due). On a disk whose
flush is slow this keeps the syncs off the writers' path and their number below one per file.
"fsync": each file was fsynced by its writer, and is journaled at once.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from nanokern.execute import durable, manifest, phases


class Batches:
    def __init__(self, work: Path, rank: int, entries: dict):
        self.work, self.rank = work, rank
        self.entries = entries  # durable and journaled
        self.pending: dict[str, dict] = {}  # finished, not yet durable
        self.batched = durable.batched()
        self.lock = threading.RLock()  # (re-entrant: a signal may arrive in the main thread holding it)
        self.due = threading.Event()
        self.closing = False
        self.error: OSError | None = None
        self.last = time.monotonic()
        self.cost = 0.0  # seconds the last batch sync took (durable.batch_due spaces them by it)
        self.syncing = False
        self.thread: threading.Thread | None = None
        if self.batched:
            self.thread = threading.Thread(target=self._syncs, name="nanokern-sync", daemon=True)
            self.thread.start()

    def finished(self, path: str, entry: dict) -> None:
        """A file is closed (and, under "fsync", fsynced): journal it once it is durable. Raises the
        error that stopped the sync thread, so that the writers stop too."""
        if self.error is not None:
            raise self.error
        with self.lock:
            if not self.batched:
                self.entries[path] = entry
                manifest.save_journal(self.work, self.rank, self.entries)
                return
            self.pending[path] = entry
            # (while a sync runs, its cost is not known yet: the files finished meanwhile wait for a later call or close())
            if not self.syncing and durable.batch_due(sum(e["size"] for e in self.pending.values()),
                                                      time.monotonic() - self.last, self.cost):
                self.due.set()

    def known(self, path: str) -> bool:
        """Whether the file is finished (durable or pending)."""
        with self.lock:
            return path in self.entries or path in self.pending

    def _syncs(self) -> None:
        while True:
            self.due.wait()
            self.due.clear()
            if self.closing:
                return
            try:
                self.flush()
            except OSError as e:  # raised again by close()
                self.error = e
                return

    def flush(self) -> None:
        """One syncfs for every file pending when it starts, then the journal records them. Runs on
        the sync thread, or in close() once that thread is gone: never two at once."""
        with self.lock:
            batch = dict(self.pending)
        if not batch:
            return
        t0 = time.monotonic()
        self.syncing = True
        try:
            with phases.span("batch sync"):  # (bench convert: their number and seconds, within writing)
                durable.syncfs(self.work)
        finally:
            self.syncing = False
        phases.add("batch syncs", 1)
        with self.lock:
            self.last = time.monotonic()
            self.cost = self.last - t0
            for path in batch:
                del self.pending[path]
            self.entries.update(batch)
            manifest.save_journal(self.work, self.rank, self.entries)

    def stop(self) -> None:
        """Stop the sync thread, after the sync it may be running."""
        self.closing = True
        self.due.set()
        if self.thread is not None:
            self.thread.join()

    def close(self) -> None:
        """Stop the sync thread, then make everything still pending durable and journal it."""
        self.stop()
        if self.error is not None:
            raise self.error
        self.flush()
