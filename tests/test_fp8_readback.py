"""An FP8 export read back: `verify` checks every byte against the manifest's CRC32s (a flipped
bit fails it) and reads its values (every FP8 weight dequantized); `inspect` describes it; an
import dequantizes it; a quantized folder nanokern does not support is one line naming config.json."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from nanokern.cli import cli
from nanokern.convert import convert


def run_cli(*args):
    """The command in this process (torch is imported already), exit code as returncode."""
    r = CliRunner().invoke(cli, [str(a) for a in args])
    r.returncode = r.exit_code
    return r


@pytest.fixture(scope="module")
def fp8_export(tmp_path_factory):
    from nanokern.bench.synthetic import choose_shape, write_checkpoint

    tmp = tmp_path_factory.mktemp("fp8rb")
    ck = write_checkpoint(tmp / "ck", choose_shape(3_000_000, "fp32", 1, "llama"), 2, 1, "fp32")
    convert(ck, tmp / "out", dtype="fp8", backend="torch", progress=False)
    return tmp / "out"


def test_verify_checks_an_fp8_export_byte_for_byte(fp8_export, tmp_path):
    r = run_cli("verify", fp8_export)
    assert r.returncode == 0 and "tensor(s) checked: well-formed and finite" in r.stdout, r.stdout + r.stderr
    bad = tmp_path / "bad"
    shutil.copytree(fp8_export, bad)
    f = bad / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 1  # one bit, inside some tensor
    f.write_bytes(bytes(data))
    r = run_cli("verify", bad)
    assert r.returncode == 1 and "CRC32 mismatch" in r.stderr, r.stdout + r.stderr


def test_inspect_describes_an_fp8_export(fp8_export):
    r = run_cli("inspect", fp8_export)
    assert r.returncode == 0, r.stderr
    assert "quantization: fp8 e4m3, 128x128 blocks:" in r.stdout and "float8_e4m3fn with weight_scale_inv" in r.stdout


UNSUPPORTED = [
    ({"quant_method": "gptq", "bits": 4}, "quant_method 'gptq'"),
    ({"quant_method": "fp8", "activation_scheme": "static", "weight_block_size": [128, 128]}, "static activation"),
    ({"quant_method": "fp8", "fmt": "e5m2", "weight_block_size": [128, 128]}, "fmt 'e5m2'"),
]


@pytest.mark.parametrize("qc, says", UNSUPPORTED)
def test_an_unsupported_quantized_folder_is_one_line(fp8_export, tmp_path, qc, says):
    d = tmp_path / "q"
    shutil.copytree(fp8_export, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"] = qc
    (d / "config.json").write_text(json.dumps(cfg))
    for args in (["inspect", d], ["convert", d, tmp_path / "nt"], ["verify", d]):
        r = run_cli(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        assert str(d / "config.json") in lines[0] and says in lines[0], lines[0]
    assert not (tmp_path / "nt").exists()
