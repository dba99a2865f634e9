"""live.save_hf under torchrun (2 ranks, gloo): what a killed save_hf leaves is removed by the next
one (and only that: the user's backups beside it stay), and ranks given different out_dir (a
node-local path) get one clear error on every rank before anything is written."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from fixtures_path import fixture

WORKER = textwrap.dedent(r"""
    import os, sys
    from pathlib import Path
    import torch.distributed as dist
    from nanokern import live
    from nanokern.errors import NanokernError
    from nanokern.execute.manifest import make_work

    def say(line):  # one write(2) per line: the ranks share stdout, and a line under PIPE_BUF is not split
        os.write(1, (line + "\n").encode())

    dist.init_process_group("gloo")
    r = dist.get_rank()
    tpg = dist.new_group([0, 1])
    pps = [dist.new_group([0]), dist.new_group([1])]
    ppg = pps[r]
    fx, base = sys.argv[1], Path(sys.argv[2])
    sh = live.load_rank(fx, r, 0)
    try:
        live.save_hf(sh, base / f"node-local-{r}", tpg, ppg, "bf16")
        say(f"FAIL rank {r}: different out_dir accepted")
    except NanokernError as e:
        say(f"rank {r} refused: {e}")
    if r == 0:  # what a save_hf killed by SIGKILL leaves: its partial folder, half written
        make_work(base / "out.partial-live-00112233aabb")
        (base / "out.partial-live-00112233aabb" / "model.safetensors").write_bytes(b"x" * 1000)
    dist.barrier()
    live.save_hf(sh, base / "out", tpg, ppg, "bf16", force=True)
    say(f"rank {r} saved")
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_save_hf_cleans_up_its_own_partials_and_refuses_different_out_dirs(tmp_path):
    fx = fixture("nanotron", "tp2_pp1_tied")
    for name in ("out.old-1", "out.partial-0123456789abcdef", "out.partial-live-mine"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "w").write_text("bak")
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(worker), str(fx),
           str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    for rank in (0, 1):
        refused = [line for line in r.stdout.splitlines() if line.startswith(f"rank {rank} refused: ")]
        assert len(refused) == 1 and "out_dir differs across ranks" in refused[0], r.stdout
        assert f"rank {rank} saved" in r.stdout
    assert "FAIL" not in r.stdout
    assert not any(tmp_path.glob("node-local-*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out", "out.old-1", "out.partial-0123456789abcdef", "out.partial-live-mine", "worker.py"])
    assert all((tmp_path / n / "w").read_text() == "bak" for n in ("out.old-1", "out.partial-0123456789abcdef",
                                                                  "out.partial-live-mine"))
    from nanokern.verify import verify

    assert verify(tmp_path / "out").ok
