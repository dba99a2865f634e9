"""transformers' own generate() on a HF folder, greedy, exactly N new tokens (EOS neither stops
it nor is suppressed: the raw model's choice, as the native decoder makes it), with the raw
logits of every step (for the top-1 margins)."""

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
    prefill_s: float  # from the call to the first new token (prefill, as the native decoder counts it)
    decode_s: float  # from the first new token to the last (N - 1 decode steps)


class _Clock:
    """A generate() streamer that only notes when each put() comes: the prompt first (before
    the prefill), then every new token as it is chosen."""

    def __init__(self, sync):
        self.sync, self.t = sync, []

    def put(self, _value):
        self.sync()
        self.t.append(time.perf_counter())

    def end(self):
        pass


@torch.no_grad()
def hf_generate(model, ids: torch.Tensor, max_new_tokens: int) -> HFGeneration:
    """ids [B, S], or id lists of different lengths: left-padded with an attention mask (as the
    native decoder pads them, nanokern.generate.decoder.left_pad)."""
    from nanokern.generate.decoder import left_pad

    dev = next(model.parameters()).device
    ids, pad = left_pad(ids)
    ids = ids.to(dev)
    mask = torch.ones_like(ids)
    for b, p in enumerate(pad):
        mask[b, :p] = 0
    g = copy.deepcopy(model.generation_config)
    g.do_sample, g.temperature, g.top_p, g.top_k = False, None, None, None
    # no EOS: nothing stops it early and nothing suppresses EOS either (None would be replaced by
    # the model's default, and min_new_tokens would then set the EOS logit to -inf)
    g.eos_token_id = []
    g.pad_token_id = g.pad_token_id if g.pad_token_id is not None else 0
    g.max_new_tokens, g.min_new_tokens = max_new_tokens, None
    g.max_length = None
    g.use_cache = True
    g.return_dict_in_generate, g.output_logits = True, True
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    clock = _Clock(sync)
    sync()
    t0 = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=g, streamer=clock)
    sync()
    dt = time.perf_counter() - t0
    ts = clock.t  # [prompt, new 0, ..., new N-1]
    new = out.sequences[:, ids.shape[1]:].cpu()
    if new.shape[1] != max_new_tokens:
        raise RuntimeError(f"transformers generated {new.shape[1]} tokens, not {max_new_tokens}")
    logits = torch.stack([x.float().cpu() for x in out.logits], 1)
    prefill = ts[1] - t0 if len(ts) > 1 else dt
    decode = ts[-1] - ts[1] if len(ts) > 1 else 0.0
    return HFGeneration(new.tolist(), logits, dt, prefill, decode)
