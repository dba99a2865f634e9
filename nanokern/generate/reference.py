"""transformers' own generate() on a HF folder, greedy, exactly N new tokens (EOS never stops
it), with the raw logits of every step (for the top-1 margins)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch


@dataclass
class HFGeneration:
    new_ids: list[list[int]]
    logits: torch.Tensor  # [B, N, V] float32, the logits each new token was chosen from
    seconds: float  # the whole generate() call (prefill and decode)
    prefill_s: float  # one forward over the prompt with use_cache (for the prefill rate)


@torch.no_grad()
def hf_generate(model, ids: torch.Tensor, max_new_tokens: int, time_prefill: bool = False) -> HFGeneration:
    dev = next(model.parameters()).device
    ids = torch.as_tensor(ids, dtype=torch.long).to(dev)
    if ids.dim() == 1:
        ids = ids[None]
    g = copy.deepcopy(model.generation_config)
    g.do_sample, g.temperature, g.top_p, g.top_k = False, None, None, None
    g.eos_token_id = None  # nothing stops it early: exactly max_new_tokens
    g.pad_token_id = g.pad_token_id if g.pad_token_id is not None else 0
    g.max_new_tokens = g.min_new_tokens = max_new_tokens
    g.max_length = None
    g.use_cache = True
    g.return_dict_in_generate, g.output_logits = True, True
    mask = torch.ones_like(ids)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    prefill = 0.0
    if time_prefill:
        sync()
        t0 = time.perf_counter()
        model(input_ids=ids, attention_mask=mask, use_cache=True)
        sync()
        prefill = time.perf_counter() - t0
    sync()
    t0 = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=g)
    sync()
    dt = time.perf_counter() - t0
    new = out.sequences[:, ids.shape[1]:].cpu()
    if new.shape[1] != max_new_tokens:
        raise RuntimeError(f"transformers generated {new.shape[1]} tokens, not {max_new_tokens}")
    logits = torch.stack([x.float().cpu() for x in out.logits], 1)
    return HFGeneration(new.tolist(), logits, dt, prefill)
