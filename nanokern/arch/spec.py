"""The hyper-parameters of a decoder-only model, in one place for every family.

A `ModelSpec` is what a Nanotron model_config.json and a HF config.json both describe: the
LLaMA shape, plus the Qwen2Config features (q/k/v bias, NoPE layers, sliding window, MoE).
Pure data: the family tables (nanokern/arch/<family>.py) read it, nothing here reads files.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class MoeSpec:
    num_experts: int
    top_k: int
    moe_intermediate_size: int
    shared_expert_intermediate_size: int
    layers: list[int]  # the MoE layers (0-based); the others are dense MLPs of intermediate_size
    enable_shared_expert: bool = True
    router_aux_loss_coef: float = 0.01
    token_dispatcher_type: str = "alltoall"


@dataclass
class ModelSpec:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int  # rows stored in the source (Nanotron's may be padded)
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None
    hidden_act: str = "silu"
    initializer_range: float = 0.02
    head_dim: int | None = None
    attention_bias: bool = False  # q/k/v bias (never o_proj, never the MLP)
    no_rope_layer: int | None = None  # every no_rope_layer-th layer (counting from 1) has no RoPE
    sliding_window: int | None = None  # w keys including the query's own, on RoPE layers
    moe: MoeSpec | None = None
    extra: dict = field(default_factory=dict)  # source config keys carried over as they are

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads

    @property
    def q_rows(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_rows(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def uses_rope(self, layer: int) -> bool:
        return self.no_rope_layer is None or (layer + 1) % self.no_rope_layer != 0

    def window(self, layer: int) -> int | None:
        """Keys a query of this layer sees (itself included); None is full causal. NoPE layers
        never slide (Nanotron's Qwen2Attention)."""
        return self.sliding_window if self.uses_rope(layer) else None

    def is_moe_layer(self, layer: int) -> bool:
        return self.moe is not None and layer in self.moe.layers

    def features(self) -> list[str]:
        """What sets the model apart from a plain LLaMA, in words."""
        out = []
        if self.attention_bias:
            out.append("q/k/v bias")
        if self.no_rope_layer is not None:
            nope = [i for i in range(self.num_hidden_layers) if not self.uses_rope(i)]
            out.append(f"NoPE layers {nope} (no_rope_layer {self.no_rope_layer})")
        if self.sliding_window is not None:
            out.append(f"sliding window {self.sliding_window}")
        if self.moe is not None:
            m = self.moe
            out.append(f"MoE on layers {m.layers}: {m.num_experts} experts, top-{m.top_k}, width {m.moe_intermediate_size}"
                       + (f", shared expert {m.shared_expert_intermediate_size}" if m.enable_shared_expert else ""))
        return out
