"""The forward of a Nanotron checkpoint (LlamaConfig or Qwen2Config, every family), computed
one TP rank at a time from its shard files as they are on disk.

The weights come from nanokern/parity/native_weights.py (each rank's own shards, cut by their
slice metadata). Per decoder layer i, what the ModelSpec says (docs/nanotron-format.md §11):
- attention per TP rank: the fused [Q_r | K_r | V_r] projection plus its bias when the model has
  q/k/v bias; RoPE on q and k unless layer i is a NoPE layer (`spec.uses_rope(i)`); causal GQA
  attention over the whole sequence, or over the last w keys (itself included) when
  `spec.window(i)` is w; the row-parallel o_proj partial outputs are summed over ranks (what the
  all-reduce computes).
- MLP: dense SwiGLU per rank with the down_proj partials summed, or on `spec.is_moe_layer(i)`
  layers the MoE block: the replicated float32 router and experts (nanokern/parity/moe.py, plain
  torch), plus the shared expert (TP-sharded like a dense MLP, partials summed) times
  sigmoid(x @ g.T).
- the vocab-parallel embedding (each rank looks up its vocab range, masked, ranks summed) and
  lm_head (per-rank logits placed by vocab range).
Nothing goes through the converter. PP only decides which files exist; all layers run here.

Numerics (bf16; fp32 is the same up to fp32 rounding): "hf" and "fused" apply one rounding rule
to every RMSNorm and RoPE (nanokern/ops/rms_norm.py, rope.py); "nanotron" is Nanotron's own forward per
config class: LlamaConfig fuses them all (flash-attn RMSNorm and rotary); Qwen2Config computes
input_layernorm with the plain RMSNorm (HF's roundings) and post_attention_layernorm,
final_layer_norm and RoPE fused (docs/nanotron-format.md §11.2). On CPU with oneDNN's AVX2
bf16 GEMMs, "nanotron" reproduces the bf16 fixtures' logits bit for bit.

Fault injection (tests only): `fault` runs the forward with ONE deliberately wrong semantic, so
that a test can show the parity checks catch it. None (the default) is the correct forward.
  "nope_shift"        NoPE on the layers one before the real ones (layer i uses layer i+1's rule)
  "window+1"          every sliding window one key wider
  "window-1"          every sliding window one key narrower
  "renormalize_topk"  top-k routing weights divided by their sum (HF's norm_topk_prob=True)
  "no_shared_gate"    the shared expert added without its sigmoid gate
  "no_bias"           the q/k/v biases dropped
A fault that the checkpoint has nothing to break with (no NoPE layers, no window, no MoE, no
shared expert, no bias) raises ValueError, so a control can never pass vacuously.

The options are checked when the model is set up (nanokern/parity/options.py) and the weights
when they are loaded (native_weights.py, shards.py); the forward's functions check nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nanokern.formats.nanotron import NanotronCheckpoint, read_checkpoint
from nanokern.ops import attention as A
from nanokern.ops import rms_norm as N
from nanokern.ops import rope as R
from nanokern.ops import swiglu as G
from nanokern.ops.backends import resolve_backend
from nanokern.parity import moe as MOE
from nanokern.parity.native_weights import MlpRank, load_weights
from nanokern.parity.options import FAULTS, NUMERICS, check_fault, check_ids, op_numerics, torch_dtype

__all__ = ["NativeModel", "NativeOutput", "torch_dtype", "NUMERICS", "FAULTS"]


@dataclass
class NativeOutput:
    layers: list[torch.Tensor]  # hidden state after each decoder layer [B, S, H]
    final_norm: torch.Tensor  # [B, S, H]
    logits: torch.Tensor  # [B, S, V] (padded vocab of the checkpoint)


class NativeModel:
    """The forward of a Nanotron checkpoint of any family, computed rank by rank from its shard files."""

    def __init__(self, ckpt: NanotronCheckpoint | str | os.PathLike, dtype="fp32", backend: str = "auto",
                 device: str | torch.device | None = None, numerics: str = "hf", fault: str | None = None):
        self.ck = ckpt if isinstance(ckpt, NanotronCheckpoint) else read_checkpoint(ckpt)
        self._setup(self.ck.spec, self.ck.config_class, self.ck.rope_interleaved, self.ck.step_dir, dtype, backend, device,
                    numerics, fault)
        self._take(load_weights(self.ck, self.dtype, self.device))

    @classmethod
    def from_weights(cls, spec, load, config_class: str, interleaved: bool, source, dtype="fp32", backend: str = "auto",
                     device: str | torch.device | None = None, numerics: str = "hf") -> "NativeModel":
        """The same forward over weights from elsewhere (e.g. a HF folder read as one TP rank):
        `load(dtype, device)` returns a native_weights.Weights."""
        self = cls.__new__(cls)
        self.ck = None
        self._setup(spec, config_class, interleaved, source, dtype, backend, device, numerics, None)
        self._take(load(self.dtype, self.device))
        return self

    def _setup(self, spec, config_class, interleaved, source, dtype, backend, device, numerics, fault):
        self.source = os.fspath(source)
        self.dtype = torch_dtype(dtype)
        self.device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.backend = resolve_backend(backend, self.device, "attention")
        self.op_numerics = op_numerics(numerics, config_class)  # the rounding rule per op
        self.numerics = numerics
        self.spec = spec
        self.interleaved = interleaved
        self.fault = check_fault(fault, self.spec)

    def _take(self, w) -> None:
        self.embed, self.lm_head, self.layers, self.final_norm = w.embed, w.lm_head, w.layers, w.final_norm
        self.notes: list[str] = list(w.notes)
        if self.spec.features():
            self.notes.append("features: " + "; ".join(self.spec.features()))
        if self.fault:
            self.notes.append(f"FAULT INJECTED: {self.fault}")

    # -- the spec, per layer (faults applied) ----------------------------------------------------
    def uses_rope(self, i: int) -> bool:
        if self.fault == "nope_shift":
            return self.spec.uses_rope((i + 1) % self.spec.num_hidden_layers)
        return self.spec.uses_rope(i)

    def window(self, i: int) -> int | None:
        w = self.spec.sliding_window if self.uses_rope(i) else None  # NoPE layers never slide
        if w is not None and self.fault in ("window+1", "window-1"):
            w += 1 if self.fault == "window+1" else -1
        return w

    # -- forward -------------------------------------------------------------------------------
    def norm(self, x: torch.Tensor, weight: torch.Tensor, which: str) -> torch.Tensor:
        return N.rms_norm(x, weight, self.spec.rms_norm_eps, backend=self.backend, numerics=self.op_numerics[which])

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Vocab-parallel lookup: each rank its own id range (contiguous: checked at loading), masked, summed."""
        out = None
        for vr in self.embed:
            lo, hi = int(vr.ids[0]), int(vr.ids[-1]) + 1
            mask = (ids >= lo) & (ids < hi)
            local = torch.where(mask, ids - lo, torch.zeros_like(ids))
            part = F.embedding(local, vr.weight) * mask[..., None].to(self.dtype)
            out = part if out is None else out + part
        return out

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        out = torch.empty((*h.shape[:-1], self.spec.vocab_size), dtype=self.dtype, device=h.device)
        for vr in self.lm_head:
            lo, n = int(vr.ids[0]), len(vr.ids)
            if int(vr.ids[-1]) == lo + n - 1:  # a contiguous vocab range (always, in practice): no index tensor
                out[..., lo:lo + n] = F.linear(h, vr.weight)
            else:
                out[..., torch.from_numpy(vr.ids).to(h.device)] = F.linear(h, vr.weight)
        return out

    def project(self, i: int, a, h: torch.Tensor, pos, cos, sin):
        """TP rank a's q [T, nq, d], k and v [T, nkv, d] for the tokens h [T, H] at positions pos
        [T]: the fused [Q_r | K_r | V_r] projection (+ bias), RoPE on q and k unless layer i is NoPE."""
        d, nq, nkv = self.spec.head_dim, len(a.q_heads), len(a.kv_heads)
        T = h.shape[0]
        qkv = F.linear(h, a.qkv, None if self.fault == "no_bias" else a.bias)  # [T, (nq + 2 nkv) d]
        if self.uses_rope(i):
            qk = R.rope(qkv, pos, cos, sin, n_rot=nq + nkv, head_dim=d, interleaved=self.interleaved,
                        backend=self.backend, numerics=self.op_numerics["rope"])  # [T, nq + nkv, d]
            q, k = qk[:, :nq], qk[:, nq:]
        else:  # NoPE layer: q and k as projected
            q, k = qkv[:, : nq * d].reshape(T, nq, d), qkv[:, nq * d:(nq + nkv) * d].reshape(T, nkv, d)
        return q, k, qkv[:, (nq + nkv) * d:].reshape(T, nkv, d)

    def attention(self, i: int, layer, h: torch.Tensor, B: int, S: int, pos, cos, sin) -> torch.Tensor:
        d, out = self.spec.head_dim, None
        for a in layer.attn:
            q, k, v = self.project(i, a, h, pos, cos, sin)
            q, k, v = q.reshape(B, S, -1, d), k.reshape(B, S, -1, d), v.reshape(B, S, -1, d)
            o = A.attention(q, k, v, causal=True, window=self.window(i), backend=self.backend)
            part = F.linear(o.reshape(B * S, -1), a.o)
            out = part if out is None else out + part  # all-reduce of the row-parallel o_proj
        return out

    def dense(self, ranks: list[MlpRank], h: torch.Tensor) -> torch.Tensor:
        out = None
        for m in ranks:
            part = F.linear(G.swiglu(F.linear(h, m.gate_up), backend=self.backend), m.down)
            out = part if out is None else out + part  # all-reduce of the row-parallel down_proj
        return out

    def moe(self, moe, h: torch.Tensor) -> torch.Tensor:
        w, idx = MOE.route(h, moe.router, moe.top_k, renormalize=self.fault == "renormalize_topk")
        out = MOE.experts(h, moe.gate_up, moe.down, w, idx, backend=self.backend)
        if moe.shared:
            shared = self.dense(moe.shared, h)
            gate = 1.0 if self.fault == "no_shared_gate" else torch.sigmoid(F.linear(h, moe.shared_gate))
            out = out + gate * shared
        return out

    def mlp(self, layer, h: torch.Tensor) -> torch.Tensor:
        return self.moe(layer.moe, h) if layer.moe is not None else self.dense(layer.mlp, h)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> NativeOutput:
        """ids [B, S] (checked by __call__) -> every layer's hidden state, the final norm, the logits."""
        sp = self.spec
        B, S = ids.shape
        pos = torch.arange(S, device=self.device).repeat(B)
        cos, sin = R.rope_tables(S, sp.head_dim, sp.rope_theta, self.dtype, self.device)
        x = self.embed_tokens(ids).reshape(B * S, sp.hidden_size)
        hidden = []
        for i, layer in enumerate(self.layers):
            x = x + self.attention(i, layer, self.norm(x, layer.input_norm, "input_norm"), B, S, pos, cos, sin)
            x = x + self.mlp(layer, self.norm(x, layer.post_norm, "post_norm"))
            hidden.append(x.reshape(B, S, -1))
        fn = self.norm(x, self.final_norm, "final_norm")
        return NativeOutput(hidden, fn.reshape(B, S, -1), self.logits(fn).reshape(B, S, -1))

    def __call__(self, ids: torch.Tensor) -> NativeOutput:
        ids = ids.to(self.device)
        check_ids(ids, self.spec.vocab_size)
        return self.forward(ids)
