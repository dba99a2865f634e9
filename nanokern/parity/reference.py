"""The reference side: the HF folder's transformers model (AutoModelForCausalLM: LlamaForCausalLM,
Qwen2ForCausalLM, SmolLM3ForCausalLM or Qwen2MoeForCausalLM, whatever config.json names), with
forward hooks on every decoder layer (model.model.layers[i]) and on the final norm
(model.model.norm), which all four classes have."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from nanokern.errors import NanokernError


@dataclass
class HFOutput:
    layers: list[torch.Tensor]
    final_norm: torch.Tensor
    logits: torch.Tensor


@contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if was:
            hf_logging.enable_progress_bar()


def read_hf_config(hf_dir: str | os.PathLike) -> dict:
    f = Path(hf_dir) / "config.json"
    if not f.is_file():
        raise NanokernError("not a HF model folder (no config.json)", hf_dir)
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise NanokernError(f"config.json is not valid JSON ({e})", f) from None


def tokenizer_vocab_size(hf_dir: str | os.PathLike) -> int | None:
    """Number of ids the tokenizer in the folder can produce (tokenizer.json), or None."""
    f = Path(hf_dir) / "tokenizer.json"
    if not f.is_file():
        return None
    try:
        tj = json.loads(f.read_text())
        ids = set((tj.get("model") or {}).get("vocab", {}).values())
        ids |= {t["id"] for t in tj.get("added_tokens") or []}
        return max(ids) + 1 if ids else None
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        return None


def load_hf(hf_dir: str | os.PathLike, dtype: torch.dtype, device: torch.device, attn_implementation: str = "eager"):
    from transformers import AutoModelForCausalLM

    with _quiet_transformers():
        try:
            model = AutoModelForCausalLM.from_pretrained(os.fspath(hf_dir), dtype=dtype, attn_implementation=attn_implementation)
        except (OSError, ValueError) as e:
            raise NanokernError(f"transformers cannot load it: {str(e).splitlines()[0]}", hf_dir) from None
    return model.to(device).eval()


@torch.no_grad()
def hf_forward(model, ids: torch.Tensor) -> HFOutput:
    layers: list = [None] * len(model.model.layers)
    captured: dict = {}

    def layer_hook(i):
        def hook(_mod, _inp, out):
            layers[i] = (out[0] if isinstance(out, tuple) else out).detach()

        return hook

    def norm_hook(_mod, _inp, out):
        captured["norm"] = out.detach()

    handles = [layer.register_forward_hook(layer_hook(i)) for i, layer in enumerate(model.model.layers)]
    handles.append(model.model.norm.register_forward_hook(norm_hook))
    try:
        dev = next(model.parameters()).device
        out = model(input_ids=ids.to(dev), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return HFOutput(layers, captured["norm"], out.logits.detach())
