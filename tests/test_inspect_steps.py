"""A checkpoints folder of several steps: `inspect` lists every step (complete or why not, size,
time); without latest.txt the newest complete step is taken and the one line says so; the
completeness verdict the watch uses names the file at fault."""

from __future__ import annotations

import shutil

import pytest
from fixtures_path import fixture
from helpers import run_cli

from nanokern.formats.nanotron import steps as S

SHARD = "model/model/lm_head/pp_block/model_weight_pp-rank-1-of-2_tp-rank-0-of-2.safetensors"


@pytest.fixture
def run_dir(tmp_path):
    """Steps 100 (complete), 200 (no model_config.json yet), 300 (a truncated shard), no latest.txt."""
    src = fixture("nanotron", "tp2_pp2") / "0"
    root = tmp_path / "checkpoints"
    for step in (100, 200, 300):
        shutil.copytree(src, root / str(step))
    (root / "200" / "model_config.json").unlink()
    with open(root / "300" / SHARD, "r+b") as f:
        f.truncate(1000)
    return root


def test_inspect_lists_every_step_and_takes_the_newest_complete(run_dir):
    r = run_cli("inspect", run_dir)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "steps: 3 in this folder (no latest.txt; 1 complete)" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("    ") and line.split()[0].isdigit()}
    assert set(rows) == {"100", "200", "300"}
    assert "complete  <- this one" in rows["100"]
    assert "incomplete" in rows["200"] and "model_config.json" in rows["200"]
    assert "incomplete" in rows["300"] and SHARD.rsplit("/", 1)[1] in rows["300"] and "truncated" in rows["300"]
    assert all(" kB " in rows[s] and " files " in rows[s] for s in rows)  # size and file count
    said = [line for line in out.splitlines() if "no latest.txt: took step 100" in line]
    assert len(said) == 1 and "200" in said[0] and "300" in said[0]


def test_convert_without_latest_takes_the_newest_complete_step_and_says_so(run_dir, tmp_path):
    r = run_cli("convert", run_dir, tmp_path / "out", "-q")
    assert r.returncode == 0, r.stderr
    assert "took step 100" in r.stderr
    ref = run_cli("convert", run_dir / "100", tmp_path / "ref", "-q")
    assert ref.returncode == 0
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (tmp_path / "ref" / "model.safetensors").read_bytes()


def test_no_complete_step_names_every_step(run_dir):
    shutil.rmtree(run_dir / "100" / "model" / "model" / "decoder" / "3")
    r = run_cli("inspect", run_dir)
    assert r.returncode == 1
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "no latest.txt and no complete step" in line
    assert all(f"{s} (" in line for s in ("100", "200", "300")), line


def test_latest_txt_naming_an_incomplete_step_lists_the_steps(run_dir):
    (run_dir / "latest.txt").write_text("200")
    r = run_cli("inspect", run_dir)
    assert r.returncode == 1
    assert "model_config.json" in r.stderr and "100 complete, 200 incomplete, 300 incomplete" in r.stderr
    (run_dir / "latest.txt").write_text("100")
    r = run_cli("inspect", run_dir)
    assert r.returncode == 0 and "latest.txt: '100'" in r.stdout and "<- this one" in r.stdout


def test_verdict_names_the_file(run_dir):
    step = run_dir / "100"
    assert S.verdict(step).complete
    cfg = (step / "model_config.json").read_text()
    (step / "model_config.json").write_text(cfg[: len(cfg) // 2])  # half written, as Nanotron's ranks may leave it
    v = S.verdict(step)
    assert not v.complete and not v.looks_complete and v.file.endswith("model_config.json")
    (step / "model_config.json").write_text(cfg)
    (step / "config.yaml").write_text("general: [unclosed")
    v = S.verdict(step)
    assert not v.complete and v.looks_complete and v.file.endswith("config.yaml")
    shutil.copy(fixture("nanotron", "tp2_pp2") / "0" / "config.yaml", step / "config.yaml")
    (step / SHARD).unlink()  # one TP shard of the lm_head not there (yet)
    v = S.verdict(step)
    assert not v.complete and v.looks_complete and "tp-rank-0-of-2" in v.reason
    v = S.verdict(run_dir / "300")
    assert not v.complete and v.file.endswith(SHARD.rsplit("/", 1)[1])


def test_signature_changes_when_a_file_grows(run_dir):
    st = S.observe(S.Step("100", 100, run_dir / "100"))
    before, size = st.signature, st.bytes
    with open(run_dir / "100" / "random" / "extra.pt", "wb") as f:
        f.write(b"x")
    assert S.observe(st).signature != before and st.bytes == size + 1
    assert [s.name for s in S.list_steps(run_dir)] == ["100", "200", "300"]


def test_source_signature_follows_only_what_an_export_reads(run_dir):
    """The watch compares `source` before and after an export: optimizer or random files written
    later (by a writer whose last file is not model_config.json) must not void the export, a
    rewritten shard or config must."""
    st = S.observe(S.Step("100", 100, run_dir / "100"))
    full, source = st.signature, st.source
    (run_dir / "100" / "random" / "extra.pt").write_bytes(b"x")
    S.observe(st)
    assert st.signature != full and st.source == source
    for rel in (SHARD, "model_config.json", "config.yaml"):
        with open(run_dir / "100" / rel, "ab") as f:
            f.write(b" ")
        before = st.source
        assert S.observe(st).source != before, rel
