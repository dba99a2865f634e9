"""nanokern.live never leaves a rank hanging (4 ranks under torchrun, gloo, the TP2 x PP2
fixture; the checks run in tests/test_live_faults_worker.py): one rank breaks out of hf_weights
or its consumer raises inside hf_buckets (every rank, or the one destination rank), or a packer
given the iterator raises (closed by contextlib.closing, its exception kept), or its kernel
fails inside save_hf -> every other rank raises a NanokernError naming it, well within 30 s, the
stopping rank lives on and the process groups still work; one rank calling alone -> a clear error after its timeout;
ranks calling different functions -> one clear error on every rank; a rank holding its iterator
past the timeout -> the others raise; a whole call afterwards is still exact; and last, a rank
failing inside a step, while the others are in its collectives -> they raise too."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures_path import fixture

from nanokern.convert import convert

WORKER = Path(__file__).with_name("test_live_faults_worker.py")


@pytest.mark.slow
def test_one_rank_stopping_stops_every_rank(tmp_path):
    fx = fixture("nanotron", "tp2_pp2")
    convert(fx, tmp_path / "ref", to="hf", dtype="bf16", progress=False)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4", str(WORKER), str(fx),
           str(tmp_path / "ref"), str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    fails = [line for line in r.stdout.splitlines() if line.startswith("FAIL")]
    assert r.returncode == 0 and not fails, "\n".join(fails[:20]) + "\n" + r.stderr[-4000:]
    assert "fault checks: 0 failure(s)" in r.stdout
    delays = {m[1]: float(m[2]) for m in re.finditer(r"^DELAY (\S+) (\S+)$", r.stdout, re.M)}
    assert sorted(delays) == ["break_all", "break_first_dest", "packer_closing", "raise_buckets"], r.stdout
    assert all(0 <= d < 30 for d in delays.values()), delays
    alive = re.findall(r"^ALIVE (\S+) (\d)$", r.stdout, re.M)
    assert sorted(alive) == [("break_all", "3"), ("break_first_dest", "2"), ("packer_closing", "0"), ("raise_buckets", "1")]
    assert re.search(r"^ALONE \S+ nanokern.live.hf_metadata: rank\(s\) 1 did not call", r.stdout, re.M), r.stdout
    assert float(re.search(r"^SAVE (\S+)$", r.stdout, re.M)[1]) < 30, r.stdout
    assert float(re.search(r"^INSIDE (\S+)$", r.stdout, re.M)[1]) < 30, r.stdout
    assert re.search(r"^MISMATCH \S+ nanokern.live: ranks called different things", r.stdout, re.M), r.stdout
    print("\n".join(line for line in r.stdout.splitlines() if line.startswith(("DELAY", "SAVE", "INSIDE", "ALONE", "MISMATCH"))))
