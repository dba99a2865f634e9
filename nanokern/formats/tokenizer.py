"""Tokenizer files beside a HF model: which to copy, the ids of the special tokens, and the
tokenizer a Nanotron checkpoint's config.yaml names (a local folder, or a hub id in the local
HF cache).

Read from tokenizer.json / tokenizer_config.json directly, so a conversion never imports
transformers.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from nanokern.errors import NanokernError

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)


def tokenizer_files(folder: str | Path) -> dict[str, bytes]:
    d = Path(folder)
    if not d.is_dir():
        raise NanokernError("tokenizer folder does not exist", d)
    files = {name: (d / name).read_bytes() for name in TOKENIZER_FILES if (d / name).is_file()}
    if "tokenizer.json" not in files and "tokenizer.model" not in files and "vocab.json" not in files:
        raise NanokernError("no tokenizer.json, tokenizer.model or vocab.json here", d)
    return files


def _token_str(v) -> str | None:
    if isinstance(v, dict):
        return v.get("content")
    return v if isinstance(v, str) else None


def special_token_ids(files: dict[str, bytes]) -> tuple[dict[str, int | None], int | None]:
    """({'bos': id, 'eos': id, 'pad': id}, vocabulary size) as far as the files tell."""
    vocab: dict[str, int] = {}
    if "tokenizer.json" in files:
        tj = json.loads(files["tokenizer.json"])
        model_vocab = (tj.get("model") or {}).get("vocab")
        if isinstance(model_vocab, dict):
            vocab.update(model_vocab)
        for t in tj.get("added_tokens") or []:
            vocab[t["content"]] = t["id"]
    elif "vocab.json" in files:
        vocab.update(json.loads(files["vocab.json"]))
    cfg = json.loads(files["tokenizer_config.json"]) if "tokenizer_config.json" in files else {}
    smap = json.loads(files["special_tokens_map.json"]) if "special_tokens_map.json" in files else {}
    ids: dict[str, int | None] = {}
    for k in ("bos", "eos", "pad"):
        s = _token_str(cfg.get(f"{k}_token")) or _token_str(smap.get(f"{k}_token"))
        ids[k] = vocab.get(s) if s is not None else None
    size = (max(vocab.values()) + 1) if vocab else None
    return ids, size


def has_tokenizer(folder: str | Path) -> bool:
    d = Path(folder)
    return any((d / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "vocab.json"))


def named_by_checkpoint(step_dir: str | Path) -> tuple[Path | None, str]:
    """The tokenizer a Nanotron checkpoint's config.yaml names (tokenizer.tokenizer_name_or_path):
    (its folder, where it was found) or (None, why the checkpoint has none), each said in a few
    words for one line. A local folder is used as it is; a hub id only from the local HF cache
    (offline: nothing is downloaded), and only then is huggingface_hub imported."""
    name, revision = _config_yaml_tokenizer(Path(step_dir) / "config.yaml")
    if not name:
        return None, "the checkpoint has no tokenizer (its config.yaml names none)"
    p = Path(name).expanduser()
    if p.is_dir():
        if has_tokenizer(p):
            return p, f"using {p} (config.yaml's tokenizer_name_or_path)"
        return None, f"the checkpoint has no tokenizer (its config.yaml names {p}, a folder with no tokenizer files)"
    hub = bool(_HUB_ID.fullmatch(name))
    snap = _hub_cached(name, revision) if hub else None
    if snap is not None:
        return snap, f"using {name} from the local HF cache, {snap} (config.yaml's tokenizer_name_or_path)"
    where = "neither a folder here nor in the local HF cache" if hub else "not a folder here"
    return None, f"the checkpoint has no tokenizer (its config.yaml names {name}, {where})"


def of_checkpoint(path: str | Path) -> tuple[Path | None, str]:
    """named_by_checkpoint() for a Nanotron checkpoints_path or step folder; (None, why) for
    anything else (a damaged checkpoint: its reader says what is wrong, later)."""
    from nanokern.formats import nanotron

    if not nanotron.is_nanotron(Path(path)):
        return None, "the folder has no tokenizer"
    try:
        step = nanotron.find_step_dir(path)
    except NanokernError:
        return None, "the checkpoint has no tokenizer"
    return named_by_checkpoint(step)


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def _config_yaml_tokenizer(f: Path) -> tuple[str | None, str | None]:
    if not f.is_file():
        return None, None
    import yaml

    try:
        cfg = yaml.safe_load(f.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return None, None  # the checkpoint reader reports a damaged config.yaml
    tok = cfg.get("tokenizer") if isinstance(cfg, dict) else None
    if not isinstance(tok, dict):
        return None, None
    name, rev = tok.get("tokenizer_name_or_path"), tok.get("tokenizer_revision")
    return (str(name) if name else None), (str(rev) if rev else None)


def hub_cache_dir() -> str:
    """huggingface_hub's cache folder, read from the environment now (HF_HUB_CACHE, else HF_HOME/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def _hub_cached(repo_id: str, revision: str | None) -> Path | None:
    """The snapshot folder of repo_id in the local HF cache, with a tokenizer in it, or None."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        snap = Path(snapshot_download(repo_id, revision=revision, cache_dir=hub_cache_dir(), local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, or not a valid id: no tokenizer, said in one line
        return None
    return snap if has_tokenizer(snap) else None
