"""A Nanotron checkpoint's step folder (when the path alone says which) and reading its configs (model_config.json,
config.yaml, checkpoint_metadata.json)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from nanokern.arch import nanotron_config
from nanokern.errors import NanokernError
from nanokern.io.regular import read_text

def step_dir_of(path: str | os.PathLike) -> Path | None:
    """A checkpoints_path with latest.txt: the step it names; a step folder (model/ or
    model_config.json): itself; a folder of steps without latest.txt: None (which step is meant
    depends on which are complete: resolve.find_step_dir)."""
    p = Path(path)
    if not p.exists():
        raise NanokernError("does not exist", p)
    if not p.is_dir():
        raise NanokernError("is not a directory", p)
    latest = p / "latest.txt"
    if latest.exists():
        step = _read_text(latest).strip()
        if not step:
            raise NanokernError("latest.txt is empty", latest)
        if not _STEP.match(step):
            raise NanokernError(f"latest.txt must hold a step number, not {step[:40]!r}", latest)
        sd = p / step
        if not sd.is_dir():
            raise NanokernError(f"names step {step!r} but {sd} does not exist", latest)
        return sd
    if (p / "model").is_dir() or (p / "model_config.json").exists():
        return p
    return None


_STEP = re.compile(r"^[A-Za-z0-9_.-]+$")  # a folder name beside latest.txt, never a path


_read_text = read_text  # (a FIFO or a device is refused from its stat, never opened)


def read_model_config(step_dir: Path) -> dict:
    f = step_dir / "model_config.json"
    if not f.exists() and not f.is_symlink():
        raise NanokernError("missing model_config.json", f)
    try:
        cfg = json.loads(_read_text(f))
    except json.JSONDecodeError as e:
        raise NanokernError(f"not valid JSON ({e})", f) from None
    if not isinstance(cfg, dict):
        raise NanokernError("not a JSON object", f)
    nanotron_config.check(cfg, f)
    return cfg


def _uses_mup(step_dir: Path) -> bool:
    f = step_dir / "config.yaml"
    if not f.exists():
        return False
    import yaml

    try:
        y = yaml.safe_load(_read_text(f))
    except yaml.YAMLError as e:
        raise NanokernError(f"not valid YAML ({str(e).splitlines()[0]})", f) from None
    if y is None:
        return False
    if not isinstance(y, dict):
        raise NanokernError("not a YAML mapping (a Nanotron training config)", f)
    model = y.get("model") or {}
    init = model.get("init_method") if isinstance(model, dict) else None
    return bool(init.get("use_mup")) if isinstance(init, dict) else False


def source_extras(step_dir: Path) -> dict:
    """Facts of a Nanotron source that a reshard carries over (configs)."""
    import yaml

    out = {"step": step_dir.name}
    for key, name, load, errors in (("checkpoint_metadata", "checkpoint_metadata.json", json.loads, json.JSONDecodeError),
                                    ("config_yaml", "config.yaml", yaml.safe_load, yaml.YAMLError)):
        f = step_dir / name
        if f.exists():
            try:
                out[key] = load(_read_text(f))
            except (errors, UnicodeDecodeError, OSError) as e:
                raise NanokernError(f"unreadable {name} ({e})", f) from None
    return out

