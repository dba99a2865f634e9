"""Tokenizer files beside a HF model: which to copy, and the ids of the special tokens.

Read from tokenizer.json / tokenizer_config.json directly, so a conversion never imports
transformers.
"""

from __future__ import annotations

import json
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
