"""Tiny random HF models of each family, built in code with transformers' own classes and written
with `save_pretrained` (so tensor names, expert layout and config.json are what transformers
writes). Sizes fit every test layout: 8 heads / 4 KV heads (TP 4), 6 layers (PP 3), vocab 96.
Weights have real structure: normal std 0.1, RMSNorm weights 1 + 0.1·N, float32."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

COMMON = dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=4, num_hidden_layers=6, vocab_size=96,
              intermediate_size=64, rms_norm_eps=1e-6, max_position_embeddings=128, hidden_act="silu",
              bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _rope(theta: float) -> dict:
    return {"rope_parameters": {"rope_type": "default", "rope_theta": theta}}


# family -> (transformers class, config class, settings on top of COMMON)
FAMILIES = {
    "llama": ("LlamaForCausalLM", "LlamaConfig",
              dict(attention_bias=False, mlp_bias=False, tie_word_embeddings=False, **_rope(10000.0))),
    "qwen2_bias": ("Qwen2ForCausalLM", "Qwen2Config",
                   dict(use_sliding_window=False, tie_word_embeddings=False, **_rope(1000000.0))),
    "qwen2_swa": ("Qwen2ForCausalLM", "Qwen2Config",
                  dict(use_sliding_window=True, sliding_window=5, max_window_layers=0, tie_word_embeddings=False,
                       **_rope(10000.0))),
    "smollm3_nope": ("SmolLM3ForCausalLM", "SmolLM3Config",
                     dict(no_rope_layer_interval=3, use_sliding_window=False, tie_word_embeddings=True,
                          **_rope(50000.0))),
    "qwen2_moe": ("Qwen2MoeForCausalLM", "Qwen2MoeConfig",
                  dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                       shared_expert_intermediate_size=32, mlp_only_layers=[1, 4], norm_topk_prob=False,
                       decoder_sparse_step=1, qkv_bias=True, use_sliding_window=False, tie_word_embeddings=False,
                       **_rope(10000.0))),
}

# models nanokern must refuse to import: family -> (class, config class, settings, key the error names)
REFUSED = {
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", dict(head_dim=8, tie_word_embeddings=False),
              "model_type|qwen3|q_norm|k_norm"),
    "llama_head_dim": ("LlamaForCausalLM", "LlamaConfig", dict(head_dim=16, tie_word_embeddings=False), "head_dim"),
    "llama_mlp_bias": ("LlamaForCausalLM", "LlamaConfig", dict(mlp_bias=True, tie_word_embeddings=False), "mlp_bias"),
}


def randomize(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.1 * noise if name.endswith("norm.weight") else 0.1 * noise)


def build(family: str, folder: Path, seed: int = 0) -> Path:
    """save_pretrained of a random float32 model of `family` (FAMILIES or REFUSED) into `folder`."""
    cls, cfg_cls, settings = (FAMILIES.get(family) or REFUSED[family])[:3]
    return build_model(cls, cfg_cls, settings, folder, seed)


def build_model(cls: str, cfg_cls: str, settings: dict, folder: Path, seed: int = 0) -> Path:
    """save_pretrained of a random float32 transformers `cls` with COMMON + settings into `folder`."""
    cfg = getattr(transformers, cfg_cls)(**{**COMMON, **settings})
    torch.manual_seed(seed)
    model = getattr(transformers, cls)(cfg).to(torch.float32)
    randomize(model, seed)
    model.save_pretrained(folder)
    return folder
