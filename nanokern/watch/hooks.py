"""What runs after each export (rank 0): the parity check (--check parity) and the user's
command (--exec)."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

PARITY_FILE = "nanokern-parity.json"


def parity_dtype(exported: str) -> str:
    """The parity check's dtype for an export's dtype: bf16 as bf16, anything else in fp32
    (parity has no fp16 rule; fp32 holds fp16 values exactly)."""
    return "bf16" if exported in ("bfloat16", "bf16") else "fp32"


def check_parity(step_dir: Path, out: Path, exported_dtype: str, device: str) -> dict:
    """The native forward over the step's shards vs transformers on the export; the full report
    goes to OUT/<step>/nanokern-parity.json, the figures are returned for the log."""
    from nanokern.parity.check import run_parity  # torch, transformers: only with --check parity

    dtype = parity_dtype(exported_dtype)
    t0 = time.perf_counter()
    rep = run_parity(step_dir, out, dtype=dtype, device=device)
    seconds = time.perf_counter() - t0
    tmp = out / f".{PARITY_FILE}.tmp"
    rep.write_json(tmp)
    os.replace(tmp, out / PARITY_FILE)
    logits = rep.logits.metrics
    layers = [r.metrics.get("rel_l2") for r in rep.rows[:-1] if r.metrics.get("rel_l2") is not None]
    bad = rep.first_failure()
    return {"seconds": seconds, "passed": rep.passed, "suspect": not rep.passed, "dtype": dtype,
            "logits_max_abs": logits.get("max_abs"), "top1_mismatch": logits.get("top1_mismatch"),
            "layers_rel_l2_max": max(layers) if layers else None, "first_failure": None if bad is None else bad.name,
            "report": str(out / PARITY_FILE)}


def parity_record(step_dir: Path, out: Path, exported_dtype: str, device: str) -> tuple[dict, str]:
    """check_parity's figures and the line that says them; a check that cannot run marks the
    step suspect (its error recorded), it never stops the watch."""
    try:
        fig = check_parity(step_dir, out, exported_dtype, device)
    except Exception as e:  # noqa: BLE001 - a check that cannot run marks the step
        return {"passed": False, "suspect": True, "error": f"{type(e).__name__}: {e}"}, \
            f"parity check could not run ({e}): marked suspect, export kept"
    line = (f"parity {'ok' if fig['passed'] else 'FAILED'} ({fig['dtype']}: logits max|diff| "
            f"{fig['logits_max_abs']:.3g}" + (f", first failing row {fig['first_failure']}" if not fig["passed"] else "")
            + ")" + ("" if fig["passed"] else ": marked suspect, export kept"))
    return fig, line


def quotes_out(command: str) -> bool:
    """Does the command write {out} inside quotes? substitute() quotes it itself, so inside "..."
    (or '...') the value ends up unquoted, and a folder name holding $(...) or a backquote would
    run. ({step} is digits: harmless anywhere.)"""
    quote, i = None, 0
    while i < len(command):
        c = command[i]
        if c == "\\" and quote != "'":
            i += 2
            continue
        if quote is None and c in "'\"" or c == quote:
            quote = None if quote else c
        elif quote and command.startswith("{out}", i):
            return True
        i += 1
    return False


def substitute(command: str, step: str, out: Path) -> str:
    """{step} and {out} in the command, shell-quoted."""
    return command.replace("{step}", shlex.quote(step)).replace("{out}", shlex.quote(str(out)))


def run_exec(command: str, step: str, out: Path, step_dir: Path, check: str = "") -> dict:
    """Run the command through the shell with NANOKERN_STEP, NANOKERN_OUT, NANOKERN_SOURCE and
    NANOKERN_CHECK (passed, suspect, or empty without --check) in its environment; its output goes
    where the watch's goes. Returns the log's fields."""
    env = {**os.environ, "NANOKERN_STEP": step, "NANOKERN_OUT": str(out), "NANOKERN_SOURCE": str(step_dir),
           "NANOKERN_CHECK": check}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):  # not a rank of ours
        env.pop(k, None)
    cmd = substitute(command, step, out)
    t0 = time.perf_counter()
    try:
        rc = subprocess.run(cmd, shell=True, env=env).returncode
    except OSError as e:
        return {"seconds": time.perf_counter() - t0, "command": cmd, "returncode": None, "error": str(e)}
    return {"seconds": time.perf_counter() - t0, "command": cmd, "returncode": rc}
