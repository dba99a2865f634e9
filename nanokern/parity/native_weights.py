"""The parity forward's weights: each TP rank's own shard files, cut by their slice metadata.

Nothing here goes through the converter. Which parameters a layer holds, and their names, come
from the architecture table (nanokern/arch/decoder.py) and the checkpoint's ModelSpec. Per TP
rank: the fused qkv_proj [Q_r; K_r; V_r] with its bias [Q_r; K_r; V_r] when the model has q/k/v
bias, and gate_up_proj [G_r; U_r] (column-parallel); the o_proj / down_proj column slices
(row-parallel); the vocab-parallel embedding and lm_head rows. The MoE router, the experts and
the shared-expert gate are replicated (one unsharded file each); the shared expert is a
TP-sharded MLP like a dense one. Which q/k/v heads, bias entries, gate/up rows, o/down columns
and vocab rows a shard holds comes from its slice metadata (`Shard.pairs`), never from
assumptions; layouts a TP rank could not compute with (q heads whose kv heads the rank does not
hold, o_proj columns that are not the rank's heads, gate rows without their up rows, bias
entries that are not the weight's rows, embedding shards of a non-contiguous vocab range) raise
NanokernError (nanokern/parity/shards.py reads the metadata). PP only decides which files exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from nanokern.arch import decoder as D
from nanokern.arch.kinds import Param
from nanokern.errors import NanokernError
from nanokern.formats.nanotron import NanotronCheckpoint, NtParam, Shard
from nanokern.io.safetensors import map_tensor
from nanokern.parity import shards as S

QKV = D.qkv(bias=lambda s: s.attention_bias)
ROUTER, EXPERTS_GATE_UP, EXPERTS_DOWN, SHARED_GATE_UP, SHARED_DOWN, SHARED_GATE = D.MOE
DENSE_GATE_UP, DENSE_DOWN = D.dense_mlp()


@dataclass
class AttnRank:
    tp: int
    qkv: torch.Tensor  # [(nq_r + 2 nkv_r) d, H] rows in [Q_r; K_r; V_r] order
    bias: torch.Tensor | None  # [(nq_r + 2 nkv_r) d] the same rows' q/k/v bias (None: no bias)
    q_heads: list[int]
    kv_heads: list[int]
    o: torch.Tensor  # [H, nq_r d], columns of the rank's q heads in that order
    fused_as_stored: bool  # the stored shard was already [Q_r; K_r; V_r] (no reordering)


@dataclass
class MlpRank:
    tp: int
    gate_up: torch.Tensor  # [2 I_r, H] as [G_r; U_r]
    down: torch.Tensor  # [H, I_r]


@dataclass
class MoeWeights:
    router: torch.Tensor  # [E, H] float32 whatever the model dtype (Nanotron's router)
    gate_up: torch.Tensor  # [E, H, 2 I_moe] input-major: gate = the first I_moe columns
    down: torch.Tensor  # [E, I_moe, H] input-major
    top_k: int
    shared: list[MlpRank] = field(default_factory=list)  # the shared expert per TP rank (empty: none)
    shared_gate: torch.Tensor | None = None  # [1, H]


@dataclass
class VocabRank:
    tp: int
    weight: torch.Tensor  # [V_r, H] local rows, sorted by global id
    ids: np.ndarray  # global vocab ids of those rows (contiguous ranges in practice)


@dataclass
class Layer:
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    attn: list[AttnRank]
    mlp: list[MlpRank]  # the dense MLP per TP rank (empty on MoE layers)
    moe: MoeWeights | None = None


@dataclass
class Weights:
    embed: list[VocabRank]
    lm_head: list[VocabRank]
    layers: list[Layer]
    final_norm: torch.Tensor
    notes: list[str]


# ---------------------------------------------------------------------------------------------
# per-rank weights


class _Loader:
    def __init__(self, ck: NanotronCheckpoint, dtype: torch.dtype, device: torch.device):
        self.ck, self.spec, self.dtype, self.device = ck, ck.spec, dtype, device

    def tensor(self, s: Shard, dtype: torch.dtype | None = None) -> torch.Tensor:
        return map_tensor(s.ref).to(device=self.device, dtype=dtype or self.dtype)

    def param(self, p: Param, i: int | None, bias: bool = False) -> NtParam:
        name = p.nt_bias_name(i) if bias else p.nt_name(i)
        try:
            return self.ck.params[name]
        except KeyError:
            raise NanokernError(f"the checkpoint has no {name}", self.ck.step_dir) from None

    def replicated(self, p: Param, i: int | None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A parameter stored once, unsharded, holding the whole tensor."""
        q = self.param(p, i)
        if len(q.shards) != 1:
            raise NanokernError(f"{q.name}: expected one unsharded file, found {len(q.shards)}", q.shards[0].ref.path)
        s = q.shards[0]
        full = tuple((0, n) for n in q.shape)
        if s.pairs != [(full, full)] or tuple(s.ref.shape) != tuple(q.shape):
            raise NanokernError(f"{q.name}: expected the whole {list(q.shape)} tensor in one file", s.ref.path)
        return self.tensor(s, dtype).reshape(q.shape)

    def vocab(self, p: Param, contiguous: bool = False) -> list[VocabRank]:
        """Each rank's vocab rows; contiguous: each rank's ids must be one range (the embedding
        lookup masks by range)."""
        q = self.param(p, None)
        out = []
        for r, s in sorted(S.by_rank(q).items()):
            loc, glo = S.local_index(S.row_segments(s, self.spec.hidden_size), 0, q.shape[0])
            if contiguous and len(glo) and int(glo[-1]) - int(glo[0]) + 1 != len(glo):
                raise NanokernError(f"{q.name} TP rank {r} holds the non-contiguous vocab rows {S.ranges(glo)}", s.ref.path)
            out.append(VocabRank(r, S.take_rows(self.tensor(s), loc, 0), glo))
        return out

    def attn(self, i: int) -> list[AttnRank]:
        sp = self.spec
        d, H = sp.head_dim, sp.hidden_size
        Q, KV = sp.q_rows, sp.kv_rows
        n_rep = sp.num_attention_heads // sp.num_key_value_heads
        qkv = S.by_rank(self.param(QKV, i))
        o = S.by_rank(self.param(D.O_PROJ, i))
        bias = S.by_rank(self.param(QKV, i, bias=True)) if QKV.has_bias(sp) else None
        if set(qkv) != set(o) or (bias is not None and set(bias) != set(qkv)):
            raise NanokernError(f"layer {i}: qkv_proj has TP ranks {sorted(qkv)} but o_proj {sorted(o)}"
                                + ("" if bias is None else f" and the qkv bias {sorted(bias)}"), self.ck.step_dir)
        ranks = []
        for r in sorted(qkv):
            s = qkv[r]
            segs = S.row_segments(s, H)
            lq, gq = S.local_index(segs, 0, Q)
            lk, gk = S.local_index(segs, Q, Q + KV)
            lv, gv = S.local_index(segs, Q + KV, Q + 2 * KV)
            q_heads = S.heads(gq, d, 0, "q", s.ref.path)
            k_heads = S.heads(gk, d, Q, "k", s.ref.path)
            v_heads = S.heads(gv, d, Q + KV, "v", s.ref.path)
            if k_heads != v_heads:
                raise NanokernError(f"TP rank {r} holds k heads {k_heads} but v heads {v_heads}", s.ref.path)
            if not q_heads:
                raise NanokernError(f"TP rank {r} holds no q heads", s.ref.path)
            # GQA inside the rank: local q head j must use local kv head j // n_rep
            need = [h // n_rep for h in q_heads]
            contiguous = q_heads == list(range(q_heads[0], q_heads[0] + len(q_heads)))
            if k_heads != sorted(set(need)) or len(q_heads) != n_rep * len(k_heads) or not contiguous:
                raise NanokernError(
                    f"TP rank {r} holds q heads {q_heads} (which use kv heads {sorted(set(need))}) but kv heads {k_heads}", s.ref.path
                )
            order = np.concatenate([lq, lk, lv])
            w = S.take_rows(self.tensor(s), order, 0)
            b = None if bias is None else self._bias(bias[r], r, np.concatenate([gq, gk, gv]), Q, KV)
            # o_proj: the rank's row-parallel slice must be the columns of its q heads
            os_ = o[r]
            cols_need = np.concatenate([np.arange(h * d, (h + 1) * d) for h in q_heads])
            lo, go = S.local_index(S.col_segments(os_, H), 0, Q)
            pos = {int(g): int(l) for l, g in zip(lo, go)}
            missing = [int(c) for c in cols_need if int(c) not in pos]
            if missing or len(go) != len(cols_need):
                raise NanokernError(
                    f"o_proj TP rank {r} holds columns {S.ranges(go)} but qkv_proj TP rank {r} produces heads {q_heads} "
                    f"(columns {S.ranges(cols_need)})", os_.ref.path,
                )
            wo = S.take_rows(self.tensor(os_), np.array([pos[int(c)] for c in cols_need], np.int64), 1)
            as_stored = np.array_equal(order, np.arange(len(order))) and len(order) == s.ref.shape[0]
            ranks.append(AttnRank(r, w, b, q_heads, k_heads, wo, as_stored))
        return ranks

    def _bias(self, s: Shard, r: int, rows: np.ndarray, Q: int, KV: int) -> torch.Tensor:
        """The bias entries of exactly the weight's rows (global [Q | K | V] indices, in the
        rank's [Q_r; K_r; V_r] order), located through the bias shard's own slice metadata."""
        segs = S.vec_segments(s)
        loc, glo = zip(*(S.local_index(segs, a, b) for a, b in ((0, Q), (Q, Q + KV), (Q + KV, Q + 2 * KV))))
        glo = np.concatenate(glo)
        if not np.array_equal(glo, rows):
            raise NanokernError(f"qkv bias TP rank {r} holds entries {S.ranges(glo)} but the qkv weight's rows are {S.ranges(rows)}",
                                s.ref.path)
        return S.take_rows(self.tensor(s), np.concatenate(loc), 0)

    def mlp(self, i: int, gate_up: Param, down: Param, width: int) -> list[MlpRank]:
        H = self.spec.hidden_size
        gu = S.by_rank(self.param(gate_up, i))
        dn = S.by_rank(self.param(down, i))
        if set(gu) != set(dn):
            raise NanokernError(f"layer {i}: {gate_up.nt} has TP ranks {sorted(gu)} but {down.nt} {sorted(dn)}", self.ck.step_dir)
        ranks = []
        for r in sorted(gu):
            s = gu[r]
            segs = S.row_segments(s, H)
            lg, gg = S.local_index(segs, 0, width)
            lu, gu_ = S.local_index(segs, width, 2 * width)
            if not np.array_equal(gg, gu_ - width):
                raise NanokernError(f"TP rank {r} holds gate rows {S.ranges(gg)} but up rows {S.ranges(gu_ - width)}", s.ref.path)
            w = S.take_rows(self.tensor(s), np.concatenate([lg, lu]), 0)
            ds = dn[r]
            ld, gd = S.local_index(S.col_segments(ds, H), 0, width)
            pos = {int(g): int(l) for l, g in zip(ld, gd)}
            if len(gd) != len(gg) or any(int(c) not in pos for c in gg):
                raise NanokernError(
                    f"{down.nt} TP rank {r} holds columns {S.ranges(gd)} but {gate_up.nt} TP rank {r} produces {S.ranges(gg)}", ds.ref.path
                )
            wd = S.take_rows(self.tensor(ds), np.array([pos[int(c)] for c in gg], np.int64), 1)
            ranks.append(MlpRank(r, w, wd))
        return ranks

    def moe(self, i: int) -> MoeWeights:
        m = self.spec.moe
        out = MoeWeights(self.replicated(ROUTER, i, torch.float32), self.replicated(EXPERTS_GATE_UP, i),
                         self.replicated(EXPERTS_DOWN, i), m.top_k)
        if SHARED_GATE_UP.in_nt(self.spec, i):
            out.shared = self.mlp(i, SHARED_GATE_UP, SHARED_DOWN, m.shared_expert_intermediate_size)
            out.shared_gate = self.replicated(SHARED_GATE, i)
        return out

    def layer(self, i: int) -> Layer:
        sp = self.spec
        mlp = self.mlp(i, DENSE_GATE_UP, DENSE_DOWN, sp.intermediate_size) if DENSE_GATE_UP.in_nt(sp, i) else []
        moe = self.moe(i) if ROUTER.in_nt(sp, i) else None
        return Layer(self.replicated(D.INPUT_NORM, i), self.replicated(D.POST_NORM, i), self.attn(i), mlp, moe)


def load_weights(ck: NanotronCheckpoint, dtype: torch.dtype, device: torch.device) -> Weights:
    sp = ck.spec
    if sp.head_dim % 2:
        raise NanokernError(f"odd head_dim {sp.head_dim}: RoPE needs an even head dimension", ck.step_dir)
    if sp.rope_scaling:
        raise NanokernError(f"rope_scaling {sp.rope_scaling!r}: the parity forward computes plain RoPE only", ck.step_dir)
    ld = _Loader(ck, dtype, device)
    notes = []
    embed = ld.vocab(D.EMBED, contiguous=True)
    if D.LM_HEAD.in_nt(sp, 0):
        lm_head = ld.vocab(D.LM_HEAD)
    else:
        lm_head = embed
        notes.append("tied embeddings: lm_head uses the embedding shards")
    layers = [ld.layer(i) for i in range(sp.num_hidden_layers)]
    if not all(a.fused_as_stored for layer in layers for a in layer.attn):
        notes.append("some qkv shards were not stored as [Q_r; K_r; V_r]: rows reordered by their slice metadata")
    return Weights(embed, lm_head, layers, ld.replicated(D.FINAL_NORM, None), notes)
