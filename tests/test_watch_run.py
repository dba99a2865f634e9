"""`nanokern watch` beside a training run: three steps replayed in Nanotron's write order with
pauses; each is exported exactly once, equal to convert's output, none before its last byte,
and `latest` ends on the last. SIGTERM: one line, exit 143."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from fixtures_path import fixture
from test_watch_trainer import Trainer, of, reference, same_export, start_watch, wait_for

STEPS = {"10": "tp2_pp2", "20": "tp1_pp1_fp32", "30": "tp2_pp1_tied"}  # different bytes in each step


@pytest.mark.slow
def test_watch_exports_each_step_once_never_a_partial_one(tmp_path):
    ck, out = tmp_path / "checkpoints", tmp_path / "hf"
    srcs = {s: fixture("nanotron", name) / "0" for s, name in STEPS.items()}
    trainer = Trainer(ck, out, pause=0.6)
    watch = start_watch(ck, out, "--poll", "0.2", "-q")
    try:
        def train():
            for i, (step, src) in enumerate(srcs.items()):
                trainer.replay(src, step, config_first=(i == 2))  # the last: another writer's order

        t = threading.Thread(target=train)
        t.start()
        t.join(timeout=120)
        wait_for(lambda: of(out, "exported", "30") or of(out, "failed"), 90, "step 30 exported", watch)
    finally:
        watch.send_signal(signal.SIGTERM)
        rc = watch.wait(timeout=30)
    err = watch.stderr.read()
    assert not trainer.touched, trainer.touched
    assert rc == 143, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted (SIGTERM)") and last.endswith("the watch stopped; the same command goes on where it was")
    for step, src in srcs.items():
        assert len(of(out, "exported", step)) == 1 and len(of(out, "started", step)) == 1, step
        same_export(out / step, reference(src, tmp_path / "ref" / step))
    assert not of(out, "failed")
    assert os.readlink(out / "latest") == "30"
    assert sorted(p.name for p in out.iterdir()) == ["10", "20", "30", "latest", "nanokern-watch.jsonl"]  # lock released
