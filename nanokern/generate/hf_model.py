"""The native decoder over a HF folder (an export): its tensors read into the parity forward's
per-rank structures as a single TP rank, so the same decoder (and the same kernels) run on both
sides of a conversion.

HF's convention: q/k rows half-split (an export undoes interleaving), separate q/k/v and
gate/up projections (fused here into [Q; K; V] and [G; U] as one rank holds them), experts as
one [out, in] matrix per expert and projection (stacked here input-major as Nanotron stores
them). Tensors that read_hf drops because they are all zero (q/k/v biases a Nanotron model
never had) are simply absent.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from nanokern.errors import NanokernError
from nanokern.formats.hf import read_hf
from nanokern.io.safetensors import map_tensor
from nanokern.parity.native import NativeModel
from nanokern.parity.native_weights import AttnRank, Layer, MlpRank, MoeWeights, VocabRank, Weights


def hf_native_model(hf_dir: str | os.PathLike, dtype="fp32", backend: str = "auto", device=None) -> NativeModel:
    model = read_hf(hf_dir)
    sp = model.spec
    if sp.rope_scaling:
        raise NanokernError(f"rope_scaling {sp.rope_scaling!r}: the native decoder computes plain RoPE only", hf_dir)
    if sp.head_dim % 2:
        raise NanokernError(f"odd head_dim {sp.head_dim}: RoPE needs an even head dimension", hf_dir)

    def load(dt: torch.dtype, dev: torch.device) -> Weights:
        def t(name: str, to=None) -> torch.Tensor:
            lt = model.tensors[name]
            return map_tensor(lt.blocks[0].ref).reshape(lt.shape).to(device=dev, dtype=to or dt)

        def has(name: str) -> bool:
            return name in model.tensors

        V = sp.vocab_size
        embed = [VocabRank(0, t("model.embed_tokens.weight"), np.arange(V))]
        lm_head = embed if sp.tie_word_embeddings or not has("lm_head.weight") else [VocabRank(0, t("lm_head.weight"), np.arange(V))]
        nq, nkv = sp.num_attention_heads, sp.num_key_value_heads
        layers = []
        for i in range(sp.num_hidden_layers):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            qkv = torch.cat([t(a + "q_proj.weight"), t(a + "k_proj.weight"), t(a + "v_proj.weight")])
            bias = None
            if has(a + "q_proj.bias"):
                bias = torch.cat([t(a + "q_proj.bias"), t(a + "k_proj.bias"), t(a + "v_proj.bias")])
            attn = [AttnRank(0, qkv, bias, list(range(nq)), list(range(nkv)), t(a + "o_proj.weight"), True)]
            mlp, moe = [], None
            if has(p + "mlp.gate.weight"):
                e = range(sp.moe.num_experts)
                x = p + "mlp.experts."
                gu = torch.stack([torch.cat([t(f"{x}{j}.gate_proj.weight"), t(f"{x}{j}.up_proj.weight")]).T for j in e])
                dn = torch.stack([t(f"{x}{j}.down_proj.weight").T for j in e])
                moe = MoeWeights(t(p + "mlp.gate.weight", torch.float32), gu.contiguous(), dn.contiguous(), sp.moe.top_k)
                s = p + "mlp.shared_expert."
                if has(s + "gate_proj.weight"):
                    moe.shared = [MlpRank(0, torch.cat([t(s + "gate_proj.weight"), t(s + "up_proj.weight")]), t(s + "down_proj.weight"))]
                    moe.shared_gate = t(p + "mlp.shared_expert_gate.weight")
            else:
                m = p + "mlp."
                mlp = [MlpRank(0, torch.cat([t(m + "gate_proj.weight"), t(m + "up_proj.weight")]), t(m + "down_proj.weight"))]
            layers.append(Layer(t(p + "input_layernorm.weight"), t(p + "post_attention_layernorm.weight"), attn, mlp, moe))
        return Weights(embed, lm_head, layers, t("model.norm.weight"), [f"HF folder read as one TP rank ({model.family.hf_class})"])

    return NativeModel.from_weights(sp, load, "hf", False, hf_dir, dtype, backend, device)
