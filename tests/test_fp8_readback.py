"""An FP8 export read back: `verify` checks every byte against the manifest's CRC32s (a flipped
bit fails it); commands that would read its values (inspect, an import) say in one line that
quantized folders are not read yet, naming its config.json."""

from __future__ import annotations

import pytest

from helpers import run_cli


@pytest.fixture(scope="module")
def fp8_export(tmp_path_factory):
    from nanokern.bench.synthetic import choose_shape, write_checkpoint

    tmp = tmp_path_factory.mktemp("fp8rb")
    ck = write_checkpoint(tmp / "ck", choose_shape(3_000_000, "fp32", 1, "llama"), 2, 1, "fp32")
    r = run_cli("convert", ck, tmp / "out", "--dtype", "fp8", "-q")
    assert r.returncode == 0, r.stderr
    return tmp / "out"


def test_verify_checks_an_fp8_export_byte_for_byte(fp8_export, tmp_path):
    import shutil

    r = run_cli("verify", fp8_export)
    assert r.returncode == 0 and "file(s) checksummed: unchanged since written" in r.stdout, r.stdout + r.stderr
    bad = tmp_path / "bad"
    shutil.copytree(fp8_export, bad)
    f = bad / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 1  # one bit, inside some tensor
    f.write_bytes(bytes(data))
    r = run_cli("verify", bad)
    assert r.returncode == 1 and "CRC32 mismatch" in r.stderr, r.stdout + r.stderr


@pytest.mark.parametrize("cmd", [["inspect"], ["convert", "--to", "nanotron"]])
def test_reading_an_fp8_export_is_one_line(fp8_export, tmp_path, cmd):
    args = [cmd[0], fp8_export, *([tmp_path / "nt"] if cmd[0] == "convert" else []), *cmd[1:]]
    r = run_cli(*args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert str(fp8_export / "config.json") in lines[0] and "quantized" in lines[0]
    assert not (tmp_path / "nt").exists()
