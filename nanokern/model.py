"""The logical model every conversion goes through.

A source (a Nanotron checkpoint in any TP x PP layout, or a HF folder) is read into a `Model`:
the LLaMA hyper-parameters (`LlamaSpec`) and, for every tensor under its HF name and in HF's
convention (q/k rows half-split, qkv and gate/up unfused), the `Block`s of on-disk bytes that
make it up. No tensor data is read: a block says "these rows/columns of that file's tensor are
those rows/columns of the logical tensor". Writers then describe each output tensor as rows of
logical tensors, and plan.py composes the two into row gathers over source files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from nanokern.formats.safetensors_io import TensorRef


@dataclass
class LlamaSpec:
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

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads

    @property
    def q_rows(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_rows(self) -> int:
        return self.num_key_value_heads * self.head_dim


def hf_layer_names(i: int) -> dict[str, str]:
    p = f"model.layers.{i}."
    return {
        "q": p + "self_attn.q_proj.weight",
        "k": p + "self_attn.k_proj.weight",
        "v": p + "self_attn.v_proj.weight",
        "o": p + "self_attn.o_proj.weight",
        "gate": p + "mlp.gate_proj.weight",
        "up": p + "mlp.up_proj.weight",
        "down": p + "mlp.down_proj.weight",
        "input_norm": p + "input_layernorm.weight",
        "post_norm": p + "post_attention_layernorm.weight",
    }


EMBED = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"


def hf_tensor_shapes(spec: LlamaSpec, vocab: int | None = None) -> dict[str, tuple[int, ...]]:
    """Every HF tensor in state_dict order, with its shape (lm_head absent when tied)."""
    H, I, V = spec.hidden_size, spec.intermediate_size, spec.vocab_size if vocab is None else vocab
    shapes: dict[str, tuple[int, ...]] = {EMBED: (V, H)}
    for i in range(spec.num_hidden_layers):
        n = hf_layer_names(i)
        shapes[n["q"]] = (spec.q_rows, H)
        shapes[n["k"]] = (spec.kv_rows, H)
        shapes[n["v"]] = (spec.kv_rows, H)
        shapes[n["o"]] = (H, spec.q_rows)
        shapes[n["gate"]] = (I, H)
        shapes[n["up"]] = (I, H)
        shapes[n["down"]] = (H, I)
        shapes[n["input_norm"]] = (H,)
        shapes[n["post_norm"]] = (H,)
    shapes[FINAL_NORM] = (H,)
    if not spec.tie_word_embeddings:
        shapes[LM_HEAD] = (V, H)
    return shapes


@dataclass
class Block:
    """Rows `src_rows` x columns [src_col0, src_col0+ncols) of a source tensor (viewed 2-D)
    are rows `dst_rows` x columns [dst_col0, dst_col0+ncols) of a logical tensor."""

    ref: TensorRef  # shape as 2-D (1-D tensors are [1, N])
    src_rows: np.ndarray
    src_col0: int
    dst_rows: np.ndarray
    dst_col0: int
    ncols: int


@dataclass
class LogicalTensor:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    blocks: list[Block] = field(default_factory=list)

    @property
    def shape2d(self) -> tuple[int, int]:
        return (1, self.shape[0]) if len(self.shape) == 1 else (self.shape[0], self.shape[1])


@dataclass
class Model:
    spec: LlamaSpec
    tensors: dict[str, LogicalTensor]
    origin: str  # "nanotron" or "hf"
    path: str
    warnings: list[str] = field(default_factory=list)
    layout: dict = field(default_factory=dict)  # origin-specific facts for `inspect`

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.tensors.values())).dtype

    def num_parameters(self) -> int:
        n = 0
        for t in self.tensors.values():
            k = 1
            for s in t.shape:
                k *= s
            n += k
        return n


def as_2d(ref: TensorRef) -> TensorRef:
    if len(ref.shape) == 2:
        return ref
    if len(ref.shape) == 1:
        return TensorRef(ref.path, ref.offset, ref.dtype, (1, ref.shape[0]))
    raise ValueError(f"{ref.path}: expected a 1-D or 2-D tensor, found shape {list(ref.shape)}")


def whole_block(ref: TensorRef) -> Block:
    """The whole of a source tensor as the whole of a logical tensor."""
    r = as_2d(ref)
    rows = np.arange(r.shape[0], dtype=np.int64)
    return Block(r, rows, 0, rows, 0, r.shape[1])
