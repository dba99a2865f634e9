"""Autoregressive decoding over the parity forward's weights (nanokern/parity/native.py): each
TP rank's part computed from its own shards, a KV cache per layer and rank (cache.py), prefill
of the whole prompt then one token at a time.

Per step, for the new tokens at positions start..start+T-1: the same per-layer math as the
forward (NativeModel.project: fused q/k/v + bias, RoPE at the absolute positions unless NoPE;
row-parallel partial sums; dense SwiGLU or MoE), with attention over the cache
(nanokern/ops/decode_attention.py: the position mask gives causality and the window). The prefill of an empty cache runs the
parity forward's attention itself; only the last position goes through the final norm and the
lm_head.

Fault injection (negative controls; None is the correct decoder):
  "cache_slot"    each decode step's k/v written one cache slot past its position
  "rope_offset0"  RoPE applied at offset 0 on every step (positions 0..T-1, not start..)
  "window_static" the window never slides: decode steps attend to every cached key
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from nanokern.generate.cache import KVCache, LayerCache
from nanokern.generate.sampling import Sampler
from nanokern.ops import attention as A
from nanokern.ops import decode_attention as DA
from nanokern.ops.rope import rope_tables
from nanokern.parity.native import NativeModel

FAULTS = ("cache_slot", "rope_offset0", "window_static")


@dataclass
class Generation:
    prompt_ids: list[list[int]]
    new_ids: list[list[int]]
    prefill_s: float
    decode_s: float
    logits: list[torch.Tensor] = field(default_factory=list)  # per step [B, V] (keep_logits)

    @property
    def prefill_tok_s(self) -> float:
        n = sum(len(p) for p in self.prompt_ids)
        return n / self.prefill_s if self.prefill_s > 0 else float("inf")

    @property
    def decode_tok_s(self) -> float:
        n = sum(max(0, len(x) - 1) for x in self.new_ids)  # the first new token comes from the prefill
        return n / self.decode_s if self.decode_s > 0 else float("inf")

    def to_dict(self) -> dict:
        return {"prompt_ids": self.prompt_ids, "new_ids": self.new_ids, "prefill_s": self.prefill_s,
                "decode_s": self.decode_s, "prefill_tokens_per_s": self.prefill_tok_s, "decode_tokens_per_s": self.decode_tok_s}


class Decoder:
    def __init__(self, model: NativeModel, fault: str | None = None, vocab: int | None = None):
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}: choose one of {', '.join(FAULTS)}")
        if fault == "window_static" and model.spec.sliding_window is None:
            raise ValueError("fault 'window_static' does not apply: the model has no sliding window")
        if fault == "rope_offset0" and not any(model.uses_rope(i) for i in range(model.spec.num_hidden_layers)):
            raise ValueError("fault 'rope_offset0' does not apply: the model has no RoPE layer")
        self.model, self.fault = model, fault
        self.vocab = min(vocab or model.spec.vocab_size, model.spec.vocab_size)
        self._tables: tuple[int, torch.Tensor, torch.Tensor] | None = None
        self._mask = None  # ((step start, ring size, window), decode_mask) shared by a step's ring layers

    # -- cache ----------------------------------------------------------------------------------
    def new_cache(self, batch: int, capacity: int) -> KVCache:
        m = self.model
        d = m.spec.head_dim
        layers = []
        for i, layer in enumerate(m.layers):
            w = None if self.fault == "window_static" else m.window(i)
            layers.append([LayerCache(batch, len(a.kv_heads), d, capacity, w, m.dtype, m.device, self.fault)
                           for a in layer.attn])
        return KVCache(layers)

    def _rope(self, n: int):
        if self._tables is None or self._tables[0] < n:
            sp = self.model.spec
            n = max(n, 64)
            cos, sin = rope_tables(n, sp.head_dim, sp.rope_theta, self.model.dtype, self.model.device)
            self._tables = (n, cos, sin)
        return self._tables[1], self._tables[2]

    # -- one step -------------------------------------------------------------------------------
    def attention(self, i: int, layer, h, B: int, T: int, start: int, pos, rope_pos, cache: list[LayerCache], cos, sin,
                  pad: torch.Tensor | None = None):
        m = self.model
        d, be = m.spec.head_dim, m.backend
        window = None if self.fault == "window_static" else m.window(i)
        out = None
        for a, c in zip(layer.attn, cache):
            q, k, v = m.project(i, a, h, rope_pos, cos, sin)
            nq, nkv = q.shape[1], k.shape[1]
            q, k, v = q.reshape(B, T, nq, d), k.reshape(B, T, nkv, d), v.reshape(B, T, nkv, d)
            if start == 0 and pad is None:  # prefill of an empty cache: the parity forward's attention
                o = A.attention(q, k, v, causal=True, window=m.window(i), backend=be)
                c.store(k, v, pos)
            else:
                kc, vc, kp = c.attend(k, v, pos)
                if kp is None and pad is not None:
                    kp = torch.arange(kc.shape[1], device=kc.device)
                mask = None
                if be == "torch" and kp is not None:
                    # the key positions are a function of the step and the cache's kind and size, so
                    # every layer of this kind shares the step's mask
                    key = (start, T, c.size if c.window is not None else None, window)
                    if self._mask is None or self._mask[0] != key:
                        self._mask = (key, DA.decode_mask(pos, kp, window, pad))
                    mask = self._mask[1]
                o = DA.decode_attention(q, kc, vc, pos, kp, window=window, backend=be, mask=mask, k_min=pad)
            part = torch.nn.functional.linear(o.reshape(B * T, nq * d), a.o)
            out = part if out is None else out + part  # all-reduce of the row-parallel o_proj
        return out

    @torch.no_grad()
    def step(self, ids: torch.Tensor, cache: KVCache, pad: torch.Tensor | None = None) -> torch.Tensor:
        """Run the new tokens ids [B, T] through the model, extending the cache; the last
        position's logits [B, vocab]. pad [B]: left padding, sequence b's first pad[b] cache slots
        are padding (its token positions start after them; no real query sees them)."""
        m = self.model
        sp = m.spec
        B, T = ids.shape
        start = cache.length
        cos, sin = self._rope(start + T)
        pos = torch.arange(start, start + T, device=m.device)
        if self.fault == "rope_offset0":
            rope_pos = torch.arange(T, device=m.device).repeat(B)
        elif pad is not None:
            rope_pos = (pos[None, :] - pad[:, None]).clamp_min(0).reshape(-1)
        else:
            rope_pos = pos.repeat(B)
        x = m.embed_tokens(ids).reshape(B * T, sp.hidden_size)
        for i, layer in enumerate(m.layers):
            h = m.norm(x, layer.input_norm, "input_norm")
            x = x + self.attention(i, layer, h, B, T, start, pos, rope_pos, cache.layers[i], cos, sin, pad)
            x = x + m.mlp(layer, m.norm(x, layer.post_norm, "post_norm"))
        last = x.reshape(B, T, -1)[:, -1].contiguous()
        fn = m.norm(last, m.final_norm, "final_norm")
        return m.logits(fn)[:, : self.vocab]

    # -- the loop -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompt: torch.Tensor | list, max_new_tokens: int, sampler: Sampler | None = None,
                 on_token=None, keep_logits: bool = False, eos_id: int | None = None) -> Generation:
        """prompt [B, S] ids, or a list of id lists of different lengths (left-padded: see
        left_pad); max_new_tokens new ids per sequence. on_token(step, ids [B]) is called as each
        token is chosen (streaming). eos_id: stop once every sequence has produced it (None:
        exactly max_new_tokens)."""
        m = self.model
        ids, pad = left_pad(prompt)
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab:
            raise ValueError(f"prompt token ids must be in [0, {self.vocab})")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        sampler = sampler or Sampler()
        prompts = [row[p:] for row, p in zip(ids.tolist(), pad)]
        ids = ids.to(m.device)
        padt = torch.tensor(pad, device=m.device) if any(pad) else None
        self._mask = None
        B, S = ids.shape
        total = S + max_new_tokens  # past max_position_embeddings too, as transformers does
        cache = self.new_cache(B, total)
        self._rope(total)
        sync = torch.cuda.synchronize if m.device.type == "cuda" else (lambda: None)
        out, logits_kept = [], []
        sync()
        t0 = time.perf_counter()
        logits = self.step(ids, cache, padt)
        tok = sampler(logits)
        sync()
        t1 = time.perf_counter()
        out.append(tok)
        if keep_logits:
            logits_kept.append(logits.float().cpu())
        if on_token:
            on_token(0, tok)
        t_cb = 0.0  # time spent in the callback (streaming), not counted as decoding
        done = None if eos_id is None else tok == eos_id
        for n in range(1, max_new_tokens):
            if done is not None and bool(done.all()):
                break
            logits = self.step(tok[:, None], cache, padt)
            tok = sampler(logits)
            out.append(tok)
            if done is not None:
                done |= tok == eos_id
            if keep_logits:
                logits_kept.append(logits.float().cpu())
            if on_token:
                c0 = time.perf_counter()
                on_token(n, tok)
                t_cb += time.perf_counter() - c0
        sync()
        t2 = time.perf_counter()
        new = torch.stack(out, 1).cpu().tolist()
        return Generation(prompts, new, t1 - t0, t2 - t1 - t_cb, logits_kept)


def left_pad(prompt, pad_id: int = 0) -> tuple[torch.Tensor, list[int]]:
    """([B, S] ids, pads per sequence): a [B, S] tensor (or one sequence) as it is; a list of id
    lists of different lengths left-padded with pad_id to the longest (as transformers' batched
    generation pads decoder-only models: the pads never attended to, the positions of each
    sequence counted from its first real token)."""
    if isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], (list, tuple)):
        if any(len(r) == 0 for r in prompt):
            raise ValueError("a prompt has no tokens")
        S = max(len(r) for r in prompt)
        pad = [S - len(r) for r in prompt]
        return torch.tensor([[pad_id] * p + list(r) for r, p in zip(prompt, pad)], dtype=torch.long), pad
    ids = torch.as_tensor(prompt, dtype=torch.long)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise ValueError(f"prompt ids must be [batch, seq] with seq >= 1, got {tuple(ids.shape)}")
    return ids, [0] * ids.shape[0]
