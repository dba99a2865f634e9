"""Never destroy what the user gave: an OUT that is, holds or lies inside SRC (or the tokenizer
folder) is refused before any byte is written, with or without --force; --force replaces only
what nanokern wrote; the clean-up beside OUT removes only the names nanokern gives its folders.
Each check compares the whole source tree, file list and bytes, before and after."""

from __future__ import annotations

import os
import shutil

import pytest
from fixtures_path import fixture
from helpers import run_cli, tree_bytes


@pytest.fixture
def ck(tmp_path):
    """A real checkpoint (checkpoints_path with latest.txt, optimizer and random .pt files) the test may lose."""
    dst = tmp_path / "ck"
    shutil.copytree(fixture("nanotron", "tp2_pp2"), dst)
    assert list(dst.rglob("*.pt")), "the fixture should carry optimizer/random states"
    return dst


def _refused(tmp_path, src, out, *extra, force):
    before = tree_bytes(tmp_path)
    r = run_cli("convert", src, out, "-q", *extra, *(["--force"] if force else []))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert r.returncode != 0, r.stdout
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--force" not in lines[0], r.stderr
    assert tree_bytes(tmp_path) == before  # nothing written, nothing removed, anywhere under tmp_path
    return lines[0]


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_out_equal_to_source_is_refused(ck, tmp_path, force):
    assert "is the source" in _refused(tmp_path, ck, ck, force=force)
    assert "is the source" in _refused(tmp_path, ck / "0", ck / "0", force=force)


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_out_inside_source_is_refused(ck, tmp_path, force):
    assert "inside the source" in _refused(tmp_path, ck, ck / "0", force=force)
    assert "inside the source" in _refused(tmp_path, ck, ck / "export", force=force)  # a new folder in it too
    assert "inside the source" in _refused(tmp_path, ck / "0", ck / "0" / "model", force=force)


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_out_containing_source_is_refused(ck, tmp_path, force):
    assert "contains the source" in _refused(tmp_path, ck / "0", ck, force=force)
    assert "contains the source" in _refused(tmp_path, ck, tmp_path, force=force)


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_symlinks_are_followed(ck, tmp_path, force):
    link = tmp_path / "link"
    os.symlink(ck, link)
    assert "is the source" in _refused(tmp_path, ck, link, force=force)  # OUT is a link to SRC
    assert "is the source" in _refused(tmp_path, link, ck, force=force)  # SRC given through a link
    assert "inside the source" in _refused(tmp_path, ck, link / "0", force=force)


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_hf_source_and_tokenizer_are_protected(ck, tmp_path, force):
    hf = tmp_path / "hf"
    r = run_cli("convert", ck, hf, "-q", "--dtype", "keep")
    assert r.returncode == 0, r.stderr
    assert "is the source" in _refused(tmp_path, hf, hf, "--to", "nanotron", force=force)
    assert "inside the source" in _refused(tmp_path, hf, hf / "nt", "--to", "nanotron", force=force)
    # the tokenizer folder given with --tokenizer lies inside the OUT that --force would replace
    tok = hf / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    assert "contains the tokenizer folder" in _refused(tmp_path, ck, hf, "--tokenizer", tok, force=force)


def test_force_replaces_only_what_nanokern_wrote(ck, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a folder of the user's")
    for force in (False, True):
        line = _refused(tmp_path, ck, mine, force=force)
        assert "not written by nanokern" in line
    out = tmp_path / "out"
    assert run_cli("convert", ck, out, "-q").returncode == 0
    r = run_cli("convert", ck, out, "-q")
    assert r.returncode == 1 and "use --force" in r.stderr
    r = run_cli("convert", ck, out, "-q", "--force", "--dtype", "keep")  # a nanokern output: replaced
    assert r.returncode == 0, r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli("convert", ck, empty, "-q", "--force").returncode == 0  # an empty folder holds nothing to lose


def test_cleanup_beside_out_removes_only_nanokern_names(ck, tmp_path):
    from nanokern.execute.manifest import make_work

    out = tmp_path / "out"
    theirs = [tmp_path / "out.partial-mine", tmp_path / "out.old-backup", tmp_path / "out.partial-0123456789abcdeX"]
    for d in theirs:
        d.mkdir()
        (d / "f").write_text("the user's")
    ours = tmp_path / "out.partial-0123456789abcdef"  # what a killed run of another plan would leave
    make_work(ours)
    (ours / "model.safetensors").write_bytes(b"half")
    r = run_cli("convert", ck, out, "-q")
    assert r.returncode == 0, r.stderr
    assert all((d / "f").read_text() == "the user's" for d in theirs)
    assert not ours.exists()
