"""Helpers the tests share: running the CLI as a user does, folders as bytes or tensors, bit views."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

NANOKERN = [sys.executable, "-m", "nanokern"]
_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def run_cli(*args, **kw) -> subprocess.CompletedProcess:
    """`python -m nanokern ARGS` in a child process, output captured as text."""
    return subprocess.run([*NANOKERN, *map(str, args)], capture_output=True, text=True, **kw)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """{path relative to root: contents} of every file under root."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def load_dir(folder) -> dict[str, torch.Tensor]:
    """Every tensor of every *.safetensors file directly in folder; a name in two files fails."""
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        part = load_file(f)
        assert not set(part) & set(tensors), (f, sorted(set(part) & set(tensors)))
        tensors.update(part)
    return tensors


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bits as integers of its element size: torch.equal on these is bit equality
    (NaN payloads, -0.0 and +0.0 told apart)."""
    return t.contiguous().view(_INT_OF_SIZE[t.element_size()])


def journaled(parent: Path) -> int:
    """How many finished files the journals of the `out.partial-*` folders under parent record."""
    n = 0
    for j in Path(parent).glob("out.partial-*/.nanokern-done-*.json"):
        try:
            n += len(json.loads(j.read_text()))
        except (json.JSONDecodeError, OSError):
            pass
    return n


def ctrl_c_once(cmd: list[str], ready, wait: float = 120, **kw) -> tuple[int, str, bytes]:
    """Start cmd, read its stdout until ready(what it printed so far) holds (or `wait` seconds or
    its exit), then send SIGINT: (exit status, stderr, stdout read before the signal). The child
    is killed if it outlives the test."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"}, **kw)
    try:
        os.set_blocking(p.stdout.fileno(), False)
        got, t0 = b"", time.monotonic()
        while not ready(got) and time.monotonic() - t0 < wait and p.poll() is None:
            got += p.stdout.read() or b""
            time.sleep(0.05)
        assert ready(got), f"not ready before the signal: {got!r}"
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    return p.returncode, err.decode(), got
