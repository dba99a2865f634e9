"""Nanotron's decoder parameters (the same module tree for LlamaForTraining and Qwen2ForTraining),
as `Param`s the family tables compose. Listed in HF state_dict order within a layer."""

from __future__ import annotations

from nanokern.arch.kinds import Kind, Param, Part
from nanokern.arch.spec import ModelSpec


def H(s: ModelSpec) -> int:
    return s.hidden_size


def I(s: ModelSpec) -> int:  # noqa: E743
    return s.intermediate_size


def Q(s: ModelSpec) -> int:
    return s.q_rows


def KV(s: ModelSpec) -> int:
    return s.kv_rows


def moe_layer(s: ModelSpec, i: int) -> bool:
    return s.is_moe_layer(i)


def dense_layer(s: ModelSpec, i: int) -> bool:
    return not s.is_moe_layer(i)


def shared_expert_layer(s: ModelSpec, i: int) -> bool:
    return s.is_moe_layer(i) and s.moe.enable_shared_expert


EMBED = Param("model.token_position_embeddings.pp_block.token_embedding.weight", Kind.VOCAB,
              (Part("model.embed_tokens.weight", H),), cols=H, layer=False)
FINAL_NORM = Param("model.final_layer_norm.pp_block.weight", Kind.REPLICATED, (Part("model.norm.weight", H),), layer=False)
LM_HEAD = Param("model.lm_head.pp_block.weight", Kind.VOCAB, (Part("lm_head.weight", H),), cols=H, layer=False,
                when=lambda s, _i: not s.tie_word_embeddings)
INPUT_NORM = Param("input_layernorm.weight", Kind.REPLICATED, (Part("input_layernorm.weight", H),))
POST_NORM = Param("post_attention_layernorm.weight", Kind.REPLICATED, (Part("post_attention_layernorm.weight", H),))
O_PROJ = Param("attn.o_proj.weight", Kind.ROW, (Part("self_attn.o_proj.weight", H),), cols=Q)


def qkv(bias=None, hf_bias=None) -> Param:
    """The fused [Q | K | V] projection; q and k rows are the ones RoPE permutes."""
    parts = (Part("self_attn.q_proj.weight", Q, rope=True), Part("self_attn.k_proj.weight", KV, rope=True),
             Part("self_attn.v_proj.weight", KV))
    return Param("attn.qkv_proj.weight", Kind.COLUMN, parts, cols=H, bias=bias, hf_bias=hf_bias)


def dense_mlp(when=dense_layer) -> tuple[Param, ...]:
    return (
        Param("mlp.gate_up_proj.weight", Kind.COLUMN, (Part("mlp.gate_proj.weight", I), Part("mlp.up_proj.weight", I)),
              cols=H, when=when),
        Param("mlp.down_proj.weight", Kind.ROW, (Part("mlp.down_proj.weight", H),), cols=I, when=when),
    )


def _E(s: ModelSpec) -> int:
    return s.moe.num_experts


def _MI(s: ModelSpec) -> int:
    return s.moe.moe_intermediate_size


def _SI(s: ModelSpec) -> int:
    return s.moe.shared_expert_intermediate_size


def _one(_s: ModelSpec) -> int:
    return 1


# Nanotron's Qwen2MoELayer (nn/moe.py): float32 router, input-major experts, TP-sharded shared
# expert with a sigmoid gate. HF Qwen2Moe always has a shared expert: zeros when Nanotron has none.
MOE = (
    Param("mlp.router.weight", Kind.REPLICATED, (Part("mlp.gate.weight", _E),), cols=H, when=moe_layer, fp32=True),
    Param("mlp.experts.merged_gate_up_proj", Kind.EXPERTS,
          (Part("mlp.experts.{e}.gate_proj.weight", _MI), Part("mlp.experts.{e}.up_proj.weight", _MI)), cols=H, when=moe_layer),
    Param("mlp.experts.merged_down_proj", Kind.EXPERTS, (Part("mlp.experts.{e}.down_proj.weight", H),), cols=_MI, when=moe_layer),
    Param("mlp.shared_expert.gate_up_proj.weight", Kind.COLUMN,
          (Part("mlp.shared_expert.gate_proj.weight", _SI), Part("mlp.shared_expert.up_proj.weight", _SI)), cols=H,
          when=shared_expert_layer, hf_when=moe_layer),
    Param("mlp.shared_expert.down_proj.weight", Kind.ROW, (Part("mlp.shared_expert.down_proj.weight", H),), cols=_SI,
          when=shared_expert_layer, hf_when=moe_layer),
    Param("mlp.shared_expert_gate.weight", Kind.REPLICATED, (Part("mlp.shared_expert_gate.weight", _one),), cols=H,
          when=shared_expert_layer, hf_when=moe_layer),
)


def layer_cost(s: ModelSpec) -> int:
    """PP cost of one decoder layer (LlamaForTraining and Qwen2ForTraining alike; MoE layers are
    costed as dense ones): 4·nq·d·H + 3·I·H."""
    return 4 * s.num_attention_heads * s.head_dim * s.hidden_size + 3 * s.intermediate_size * s.hidden_size


# Every parameter a Nanotron checkpoint can hold (LlamaConfig and Qwen2Config alike): which of
# them exist follows from the spec alone (bias, MoE layers, shared expert, tied embeddings).
NANOTRON = (EMBED, qkv(bias=lambda s: s.attention_bias), O_PROJ, *MOE, *dense_mlp(), INPUT_NORM, POST_NORM,
            FINAL_NORM, LM_HEAD)


def nanotron_params(spec: ModelSpec) -> list[tuple[str, Param, int | None]]:
    """(Nanotron name, Param, layer or None) of every parameter a checkpoint of this spec holds,
    bias files included (their names end in .bias), in model order."""
    out = []
    for p in NANOTRON:
        for i in (range(spec.num_hidden_layers) if p.layer else [None]):
            if p.in_nt(spec, 0 if i is None else i):
                out.append((p.nt_name(i), p, i))
                if p.has_bias(spec):
                    out.append((p.nt_bias_name(i), p, i))
    return out
