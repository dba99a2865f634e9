"""--check parity after each export (figures in the log and OUT_ROOT/<step>/; a failing check
marks the step suspect, keeps the export, and the watch goes on) and --exec (the step and the
folder substituted and in the environment, its exit code logged)."""

from __future__ import annotations

import json

import pytest

from fixtures_path import fixture
from helpers import run_cli
from test_watch_trainer import copy_step, of

from nanokern.watch import hooks


def test_parity_dtype_is_the_exported_one():
    assert hooks.parity_dtype("bfloat16") == "bf16"
    assert [hooks.parity_dtype(d) for d in ("float32", "float16")] == ["fp32", "fp32"]


@pytest.mark.slow
def test_check_and_exec_after_each_export(tmp_path):
    ck, out = tmp_path / "ck", tmp_path / "hf"
    copy_step(fixture("nanotron", "tp1_pp1_fp32") / "0", ck, "10")
    marker = tmp_path / "marker"
    cmd = f'echo "$NANOKERN_STEP" "$NANOKERN_OUT" {{step}} {{out}} "$NANOKERN_CHECK" > {marker}; exit 3'
    r = run_cli("watch", ck, out, "--once", "--dtype", "float32", "--check", "parity", "--exec", cmd, "-q")
    assert r.returncode == 1, r.stderr  # the command's exit code is logged, and fails a --once run
    assert "warning" not in r.stderr, r.stderr
    (chk,) = of(out, "checked", "10")
    assert chk["passed"] is True and chk["suspect"] is False and chk["dtype"] == "fp32", chk
    report = json.loads((out / "10" / hooks.PARITY_FILE).read_text())
    assert report["passed"] is True and report["dtype"] == "fp32"
    assert chk["logits_max_abs"] == report["rows"][-1]["metrics"]["max_abs"]
    (ex,) = of(out, "exec", "10")
    assert ex["returncode"] == 3
    assert marker.read_text().split() == ["10", str(out / "10"), "10", str(out / "10"), "passed"]
    order = [e["event"] for e in of(out, "exported") + of(out, "checked") + of(out, "exec")]
    assert order == ["exported", "checked", "exec"]
    s = run_cli("watch", "--status", out)
    assert s.returncode == 0 and " 3 " in s.stdout.splitlines()[1], s.stdout


def test_failing_check_marks_suspect_keeps_the_export_and_goes_on(tmp_path, monkeypatch):
    """An export whose weights were altered after it was written (two layers' norms swapped):
    the check fails, the step is marked suspect, its export kept; the next step is checked too."""
    from safetensors.torch import load_file, save_file

    from nanokern.watch import watcher
    from nanokern.watch.export import ExportOptions
    from nanokern.watch.loop import run

    ck, out = tmp_path / "ck", tmp_path / "hf"
    for step in ("10", "20"):
        copy_step(fixture("nanotron", "tp1_pp1_fp32") / "0", ck, step)
    real = hooks.check_parity

    def altered_then_checked(step_dir, dst, dtype, device):
        if dst.name == "10":
            f = dst / "model.safetensors"
            t = load_file(f)
            a, b = "model.layers.0.input_layernorm.weight", "model.layers.1.input_layernorm.weight"
            t[a], t[b] = t[b].clone(), t[a].clone()
            save_file(t, str(f), metadata={"format": "pt"})
        return real(step_dir, dst, dtype, device)

    monkeypatch.setattr(watcher.hooks, "check_parity", altered_then_checked)
    o = watcher.WatchOptions(ck, out, ExportOptions(dtype="float32", progress=False), once=True, check="parity")
    lines = []
    assert run(o, lambda m, err=False: lines.append(m)) == 1  # --once: a suspect step fails the run
    (bad,) = of(out, "checked", "10")
    assert bad["passed"] is False and bad["suspect"] is True and bad["first_failure"] == "layer 0", bad
    assert (out / "10" / "model.safetensors").is_file() and not of(out, "removed")
    assert json.loads((out / "10" / hooks.PARITY_FILE).read_text())["passed"] is False
    (good,) = of(out, "checked", "20")
    assert good["passed"] is True
    assert any("step 10: parity FAILED" in line and "suspect" in line for line in lines), lines


@pytest.mark.slow
def test_check_in_the_default_export_dtype(tmp_path):
    """The default export is bf16: the check runs in bf16 (transformers' own bf16 error as the bound)."""
    ck, out = tmp_path / "ck", tmp_path / "hf"
    copy_step(fixture("nanotron", "qwen2_dense_tp1_pp1") / "0", ck, "5")
    r = run_cli("watch", ck, out, "--once", "--check", "parity", "-q")
    assert r.returncode == 0, r.stderr
    (chk,) = of(out, "checked", "5")
    assert chk["dtype"] == "bf16" and chk["passed"] is True, chk
    assert of(out, "exported", "5")[0]["dtype"] == "bfloat16"
