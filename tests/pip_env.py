"""A folder of pinned packages for a second interpreter (or sys.path), made once from PyPI with
`pip install --no-deps --target` under a file lock, so parallel test processes make it once; a
`.complete` file marks it whole. It lives in an ignored folder at the repo root. A failure to make
it fails the test under CI (CI=true) and skips it otherwise, with the reason."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def fail_or_skip(msg: str):
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def pinned_env(env_dir: Path, pins: list[str], what: str, timeout: int) -> Path:
    """env_dir holding `pins` (made once, under a lock beside it)."""
    done = env_dir / ".complete"
    if done.is_file():
        return env_dir
    env_dir.parent.mkdir(exist_ok=True)
    with open(env_dir.parent / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.is_file():
            return env_dir
        tmp = env_dir.parent / f"tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
                            "--no-deps", "--target", str(tmp), *pins], capture_output=True, text=True, timeout=timeout)
        if r.returncode:
            shutil.rmtree(tmp, ignore_errors=True)
            fail_or_skip(f"could not install {what} from PyPI: {r.stderr.strip().splitlines()[-1:]}")
        (tmp / ".complete").write_text("\n".join(pins) + "\n")
        shutil.rmtree(env_dir, ignore_errors=True)
        os.rename(tmp, env_dir)
    return env_dir
