"""`nanokern watch` under torchrun (gloo, 2 processes): rank 0 picks each step, both ranks write
its files (convert's distributed execute); the exports are the bytes of a one-process convert."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from fixtures_path import fixture
from test_watch_trainer import Trainer, of, reference, same_export, wait_for

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


@pytest.mark.slow
def test_watch_under_torchrun_exports_what_one_process_converts(tmp_path):
    ck, out = tmp_path / "ck", tmp_path / "hf"
    srcs = {"10": fixture("nanotron", "tp2_pp2") / "0", "20": fixture("nanotron", "tp1_pp1_fp32") / "0"}
    trainer = Trainer(ck, out, pause=0.3)
    trainer.replay(srcs["10"], "10")
    w = subprocess.Popen([*TORCHRUN, "-m", "nanokern", "watch", str(ck), str(out), "--poll", "0.2",
                          "--max-shard-size", "20KB", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: of(out, "exported", "10"), 120, "step 10 exported", w)
        trainer.replay(srcs["20"], "20")  # while the ranks wait for rank 0's next decision
        wait_for(lambda: of(out, "exported", "20"), 60, "step 20 exported", w)
    finally:
        w.send_signal(signal.SIGTERM)
        w.wait(timeout=60)
    assert not trainer.touched, trainer.touched
    for step, src in srcs.items():
        assert len(of(out, "exported", step)) == 1
        assert len(list((out / step).glob("*.safetensors"))) > 4  # several files: both ranks wrote some
        same_export(out / step, reference(src, tmp_path / "ref" / step, "--max-shard-size", "20KB"))
    assert w.stdout.read().count("watching ") == 1  # rank 0 alone talks
