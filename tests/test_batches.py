"""Finished files are made durable off the writers' path: a writer that finishes a file while a
sync is running goes on at once, the files finished meanwhile share the next sync, and the
journal never names a file before a sync that started after it was finished has returned."""

import json
import threading
import time

from nanokern.execute import batches, durable


def _journal(work) -> set:
    f = work / ".nanokern-done-0.json"
    return set(json.loads(f.read_text())) if f.exists() else set()


def test_a_slow_sync_never_holds_up_a_writer_and_later_files_share_the_next_sync(tmp_path, monkeypatch):
    running, release = threading.Event(), threading.Event()
    synced = []  # per sync: the journal as it was when that sync started

    def slow_syncfs(path):
        synced.append(_journal(tmp_path))
        running.set()
        assert release.wait(30)

    monkeypatch.setattr(durable, "syncfs", slow_syncfs)
    monkeypatch.setattr(durable, "SYNC_BYTES", 1)  # every finished file makes a batch due
    monkeypatch.setattr(durable, "DURABILITY", "syncfs")
    b = batches.Batches(tmp_path, 0, {})
    b.finished("a", {"size": 10})
    assert running.wait(30)  # a's sync is running, and does not return until released
    t0 = time.monotonic()
    for name in "bcd":
        b.finished(name, {"size": 10})
    assert time.monotonic() - t0 < 5  # the writers went on (the sync is held for up to 30 s)
    assert _journal(tmp_path) == set()  # nothing is journaled before its sync returns
    release.set()
    b.close()
    assert synced == [set(), {"a"}]  # a alone, then b, c and d together
    assert _journal(tmp_path) == set("abcd") and set(b.entries) == set("abcd")


def test_a_failed_sync_is_raised_by_close_and_nothing_is_journaled(tmp_path, monkeypatch):
    def failing_syncfs(path):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(durable, "syncfs", failing_syncfs)
    monkeypatch.setattr(durable, "SYNC_BYTES", 1)
    monkeypatch.setattr(durable, "DURABILITY", "syncfs")
    b = batches.Batches(tmp_path, 0, {})
    b.finished("a", {"size": 10})
    b.thread.join(30)  # the sync thread stops at its first error
    try:
        b.close()
    except OSError as e:
        assert e.errno == 5
    else:
        raise AssertionError("close() did not raise the sync's error")
    assert _journal(tmp_path) == set() and b.entries == {}


def test_under_fsync_each_file_is_journaled_at_once_without_a_thread(tmp_path, monkeypatch):
    monkeypatch.setattr(durable, "DURABILITY", "fsync")
    b = batches.Batches(tmp_path, 0, {})
    assert b.thread is None
    b.finished("a", {"size": 10})
    assert _journal(tmp_path) == {"a"}
    b.close()
