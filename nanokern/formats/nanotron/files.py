"""Finding a Nanotron checkpoint's step folder and reading its configs (model_config.json,
config.yaml, checkpoint_metadata.json)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from nanokern.arch import nanotron_config
from nanokern.errors import NanokernError

def find_step_dir(path: str | os.PathLike, notes: list[str] | None = None) -> Path:
    """A checkpoints_path with latest.txt, a step folder holding model/ and model_config.json, or
    a checkpoints_path without latest.txt: then its newest complete step, with a line saying so
    appended to `notes` (none complete: an error naming every step and why)."""
    p = Path(path)
    if not p.exists():
        raise NanokernError("does not exist", p)
    if not p.is_dir():
        raise NanokernError("is not a directory", p)
    latest = p / "latest.txt"
    if latest.is_file():
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
    from nanokern.formats.nanotron.steps import newest_complete  # (it reads checkpoints: imported here)

    found = newest_complete(p)
    if found is not None:
        if notes is not None:
            notes.append(found[1])
        return found[0]
    raise NanokernError("not a Nanotron checkpoint (no latest.txt, no model/ folder)", p)


_STEP = re.compile(r"^[A-Za-z0-9_.-]+$")  # a folder name beside latest.txt, never a path


def _read_text(f: Path) -> str:
    try:
        return f.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise NanokernError("not a UTF-8 text file", f) from None
    except OSError as e:
        raise NanokernError(f"cannot read: {e.strerror or e}", f) from None


def is_nanotron(path: str | os.PathLike) -> bool:
    """A step folder, or a checkpoints_path (with latest.txt, or step folders: integer names)."""
    p = Path(path)
    if (p / "latest.txt").is_file() or (p / "model").is_dir():
        return True
    from nanokern.formats.nanotron.steps import step_names

    return p.is_dir() and any((p / n / "model").is_dir() or (p / n / "model_config.json").exists() for n in step_names(p))


def read_model_config(step_dir: Path) -> dict:
    f = step_dir / "model_config.json"
    if not f.is_file():
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
    if not f.is_file():
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
        if f.is_file():
            try:
                out[key] = load(f.read_text())
            except (errors, UnicodeDecodeError, OSError) as e:
                raise NanokernError(f"unreadable {name} ({e})", f) from None
    return out

