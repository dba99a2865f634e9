"""On a disk where a sync costs round trips, batch syncs are spaced by what the last one cost
(durable.batch_due), so that they take about a tenth of the run at most; the final sync is not
spaced, and nothing is journaled before a sync that covers it. Costs are injected, not timed."""

import json

from nanokern.execute import batches, durable


def test_batch_due_waits_spacing_times_the_last_syncs_cost():
    big = durable.SYNC_BYTES
    assert durable.batch_due(big, 0.001, 0.0)  # no sync yet: due on bytes, as before
    assert durable.batch_due(0, durable.SYNC_EVERY, 0.0)  # or on time
    assert not durable.batch_due(big - 1, durable.SYNC_EVERY / 2, 0.0)
    cost = 0.4  # a sync that took 0.4 s (a high-latency disk)
    assert not durable.batch_due(big * 100, cost * durable.SYNC_SPACING * 0.99, cost)
    assert durable.batch_due(big, cost * durable.SYNC_SPACING, cost)
    local = 0.002  # a local disk's sync: the next batch is due 18 ms later, as good as unspaced
    assert durable.batch_due(big, local * durable.SYNC_SPACING, local)


def _journal(work) -> set:
    f = work / ".nanokern-done-0.json"
    return set(json.loads(f.read_text())) if f.exists() else set()


def test_after_a_costly_sync_finished_files_wait_for_the_final_sync(tmp_path, monkeypatch):
    synced = []  # per sync: the journal when it started
    monkeypatch.setattr(durable, "syncfs", lambda path: synced.append(_journal(tmp_path)))
    monkeypatch.setattr(durable, "SYNC_BYTES", 1)  # every finished file would make a batch due
    monkeypatch.setattr(durable, "DURABILITY", "syncfs")
    b = batches.Batches(tmp_path, 0, {})
    with b.lock:
        b.cost = 100.0  # as if the last sync had taken 100 s: none is due for 900 s
    for name in "ab":
        b.finished(name, {"size": 10})
        assert not b.due.is_set()
    assert _journal(tmp_path) == set()
    b.close()  # the final sync is never spaced
    assert synced == [set()] and _journal(tmp_path) == {"a", "b"}


def test_a_file_finished_while_a_sync_runs_makes_no_batch_due(tmp_path, monkeypatch):
    monkeypatch.setattr(durable, "syncfs", lambda path: None)
    monkeypatch.setattr(durable, "SYNC_BYTES", 1)
    monkeypatch.setattr(durable, "DURABILITY", "syncfs")
    b = batches.Batches(tmp_path, 0, {})
    b.syncing = True  # (its cost is not known until it returns)
    b.finished("a", {"size": 10})
    assert not b.due.is_set()
    b.syncing = False
    b.finished("b", {"size": 10})
    assert b.due.is_set() or _journal(tmp_path) >= {"a", "b"}  # (the sync thread may have taken it already)
    b.close()
    assert _journal(tmp_path) == {"a", "b"}
