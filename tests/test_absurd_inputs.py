"""Absurd sizes and non-regular files are refused at once, in one line naming the file: a config
that claims more layers (or experts) than the files hold is refused before anything is built per
layer; a FIFO or a device where a shard or a config should be is refused from its stat, never
opened. A hang fails the test (an alarm in-process, a generous timeout in a child), a slow
machine does not."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess

import pytest
from fixtures_path import fixture
from helpers import NANOKERN

from nanokern.errors import NanokernError

SHARD = "model/model/final_layer_norm/pp_block/model_weight.safetensors"
HUGE = 10**9


@pytest.fixture
def deadline():
    """Fail (rather than hang) a test that runs past 30 s."""
    def alarm(signum, frame):
        raise TimeoutError("ran past 30 s: hangs")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def ck(tmp_path):
    """A step folder copied from the real TP1 PP1 fixture (4 layers), without the pickles."""
    dst = tmp_path / "ck"
    shutil.copytree(fixture("nanotron", "tp1_pp1") / "0", dst, ignore=shutil.ignore_patterns("optimizer", "lr_scheduler", "random"))
    return dst


def set_config(f, **kv):
    cfg = json.loads(f.read_text())
    cfg.update(kv)
    f.write_text(json.dumps(cfg))


def refused(r: subprocess.CompletedProcess, *words) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert str(w) in lines[0], (w, lines[0])
    return lines[0]


def test_a_billion_layers_refused_at_once(ck, tmp_path):
    set_config(ck / "model_config.json", num_hidden_layers=HUGE)
    r = subprocess.run([*NANOKERN, "convert", ck, tmp_path / "out", "-q"], capture_output=True, text=True, timeout=30)
    refused(r, ck / "model/model/decoder/4", "num_hidden_layers 1000000000", "4 layer(s)")
    assert not (tmp_path / "out").exists()


def test_more_layers_than_stored_names_the_first_missing_one(ck, deadline):
    from nanokern.formats.nanotron import read_checkpoint

    set_config(ck / "model_config.json", num_hidden_layers=HUGE)
    with pytest.raises(NanokernError) as e:
        read_checkpoint(ck)
    assert e.value.path == str(ck / "model/model/decoder/4") and "num_hidden_layers" in e.value.message


def test_a_billion_layers_is_an_incomplete_step_for_the_watch(ck, deadline):
    from nanokern.formats.nanotron import steps

    set_config(ck / "model_config.json", num_hidden_layers=HUGE)
    v = steps.verdict(ck)
    assert not v.complete and "num_hidden_layers" in v.reason


@pytest.mark.parametrize("value", [1e9, -4, 4.0, "4", True])
def test_layer_count_not_a_positive_int_names_the_key(ck, value, deadline):
    from nanokern.formats.nanotron import read_checkpoint

    set_config(ck / "model_config.json", num_hidden_layers=value)
    with pytest.raises(NanokernError, match="num_hidden_layers"):
        read_checkpoint(ck)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """HF exports of the dense TP1 PP1 fixture and of the Qwen2-MoE one, made once."""
    from nanokern.convert import convert

    root = tmp_path_factory.mktemp("hf")
    for name in ("tp1_pp1", "qwen2_moe_tp1_pp2"):
        convert(fixture("nanotron", name), root / name, progress=False)
    return root


@pytest.mark.parametrize("name, key, words", [
    ("tp1_pp1", "num_hidden_layers", ["model.layers 4 is missing"]),
    ("qwen2_moe_tp1_pp2", "num_hidden_layers", ["model.layers"]),
    ("qwen2_moe_tp1_pp2", "num_experts", ["experts"]),
])
def test_hf_config_claiming_more_than_stored_refused_at_once(hf_dirs, tmp_path, name, key, words, deadline):
    from nanokern.formats.hf import read_hf

    d = tmp_path / name
    shutil.copytree(hf_dirs / name, d)
    set_config(d / "config.json", **{key: HUGE})
    with pytest.raises(NanokernError) as e:
        read_hf(d)
    assert e.value.path == str(d / "config.json") and key in e.value.message, e.value
    for w in words:
        assert w in e.value.message, e.value


def test_hf_float_layer_count_names_the_key(hf_dirs, tmp_path, deadline):
    from nanokern.formats.hf import read_hf

    d = tmp_path / "hf"
    shutil.copytree(hf_dirs / "tp1_pp1", d)
    set_config(d / "config.json", num_hidden_layers=1e9)
    with pytest.raises(NanokernError, match="num_hidden_layers must be a positive integer"):
        read_hf(d)


def test_fifo_shard_refused_by_inspect_without_opening_it(ck):
    os.unlink(ck / SHARD)
    os.mkfifo(ck / SHARD)
    r = subprocess.run([*NANOKERN, "inspect", ck], capture_output=True, text=True, timeout=30)
    refused(r, ck / SHARD, "not a regular file (a FIFO)")


@pytest.mark.parametrize("name", ["model_config.json", "config.yaml"])
def test_fifo_config_refused(ck, name, deadline):
    from nanokern.formats.nanotron import read_checkpoint, steps

    os.unlink(ck / name)
    os.mkfifo(ck / name)
    with pytest.raises(NanokernError) as e:
        read_checkpoint(ck)
    assert e.value.path == str(ck / name) and "FIFO" in e.value.message
    v = steps.verdict(ck)  # what the watch and inspect's step list ask
    assert not v.complete and v.file == str(ck / name) and "FIFO" in v.reason


def test_fifo_hf_config_refused(hf_dirs, tmp_path, deadline):
    from nanokern.formats.hf import read_hf

    d = tmp_path / "hf"
    shutil.copytree(hf_dirs / "tp1_pp1", d)
    os.unlink(d / "config.json")
    os.mkfifo(d / "config.json")
    with pytest.raises(NanokernError, match="FIFO") as e:
        read_hf(d)
    assert e.value.path == str(d / "config.json")


def test_dev_zero_shard_is_a_device(ck, deadline):
    from nanokern.io.safetensors import read_header

    os.unlink(ck / SHARD)
    os.symlink("/dev/zero", ck / SHARD)
    with pytest.raises(NanokernError, match=r"not a regular file \(a character device\)"):
        read_header(ck / SHARD)


@pytest.mark.parametrize("size", [0, 5, 8, 1_000_000])
def test_zero_bytes_shard_says_something_sensible(ck, size):
    from nanokern.io.safetensors import read_header

    (ck / SHARD).write_bytes(bytes(size))
    with pytest.raises(NanokernError) as e:
        read_header(ck / SHARD)
    msg = e.value.message
    assert "-" not in msg.replace("safetensors", ""), msg  # never "only -8 follow"
    assert ("truncated" in msg) if size < 8 else ("header length 0" in msg), msg
