"""A LLaMA forward over a Nanotron checkpoint's tensors as they are on disk, one TP rank at a time.

Nothing here goes through the converter. For every TP rank the forward uses that rank's own
shard files: the fused qkv_proj [Q_r; K_r; V_r] and gate_up_proj [G_r; U_r] (column-parallel),
the o_proj / down_proj column slices (row-parallel: partial outputs are summed over ranks, which
is what the all-reduce computes), the vocab-parallel embedding (each rank looks up its vocab
range, masked, and the ranks are summed) and lm_head (per-rank logits concatenated by vocab
range). Which q/k/v heads, gate/up rows, o/down columns and vocab rows a shard holds comes from
its slice metadata (`Shard.pairs`), never from assumptions; layouts that a TP rank could not
compute with (a rank whose q heads need kv heads it does not hold, o_proj columns that are not
the rank's heads, gate rows without their up rows) raise NanokernError. PP only decides which
files exist; all layers run in this process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nanokern.errors import NanokernError
from nanokern.arch import decoder as D
from nanokern.formats import nanotron_layout as L
from nanokern.formats.nanotron import NanotronCheckpoint, NtParam, Shard, read_checkpoint
from nanokern.formats.safetensors_io import map_tensor
from nanokern.parity import kernels as K

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}: choose fp32 or bf16") from None


# ---------------------------------------------------------------------------------------------
# reading shards by their slice metadata


def _by_rank(p: NtParam) -> dict[int, Shard]:
    out: dict[int, Shard] = {}
    for s in p.shards:
        r = 0 if s.tp is None else s.tp
        if r in out:
            raise NanokernError(f"two files for TP rank {r} of {p.name}", s.ref.path)
        out[r] = s
    return out


def _row_segments(s: Shard, full_cols: int) -> list[tuple[int, int, int]]:
    """(local row start, global row start, rows) of a dim-0-sharded 2-D shard, checking that
    every pair spans all columns."""
    segs = []
    for (lr, lc), (gr, gc) in s.pairs:
        if lc != (0, full_cols) or gc != (0, full_cols) or lr[1] - lr[0] != gr[1] - gr[0]:
            raise NanokernError(f"expected a row slice over all {full_cols} columns, got pair {(lr, lc)} -> {(gr, gc)}", s.ref.path)
        segs.append((lr[0], gr[0], lr[1] - lr[0]))
    return segs


def _col_segments(s: Shard, full_rows: int) -> list[tuple[int, int, int]]:
    segs = []
    for (lr, lc), (gr, gc) in s.pairs:
        if lr != (0, full_rows) or gr != (0, full_rows) or lc[1] - lc[0] != gc[1] - gc[0]:
            raise NanokernError(f"expected a column slice over all {full_rows} rows, got pair {(lr, lc)} -> {(gr, gc)}", s.ref.path)
        segs.append((lc[0], gc[0], lc[1] - lc[0]))
    return segs


def _local_index(segs: list[tuple[int, int, int]], lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Local and global indices (sorted by global) of the part of the segments inside [lo, hi)."""
    loc, glo = [], []
    for l0, g0, n in segs:
        a, b = max(g0, lo), min(g0 + n, hi)
        if a < b:
            glo.append(np.arange(a, b))
            loc.append(np.arange(a, b) - g0 + l0)
    if not glo:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    g = np.concatenate(glo)
    order = np.argsort(g, kind="stable")
    return np.concatenate(loc)[order].astype(np.int64), g[order].astype(np.int64)


def _take_rows(t: torch.Tensor, idx: np.ndarray, dim: int) -> torch.Tensor:
    """t restricted to idx along dim; the tensor itself when idx is the identity."""
    if len(idx) == t.shape[dim] and np.array_equal(idx, np.arange(len(idx))):
        return t
    return t.index_select(dim, torch.as_tensor(idx, device=t.device))


def _heads(glob: np.ndarray, d: int, offset: int, what: str, path: str) -> list[int]:
    """Head indices of global rows that must form whole heads of dim d (after offset)."""
    rel = glob - offset
    blocks = rel.reshape(-1, d) if len(rel) % d == 0 else None
    if blocks is None or (blocks[:, 0] % d).any() or (blocks != blocks[:, :1] + np.arange(d)).any():
        raise NanokernError(f"{what} rows {_ranges(glob)} of this shard are not whole heads of dim {d}", path)
    return [int(x) // d for x in blocks[:, 0]]


# ---------------------------------------------------------------------------------------------
# per-rank weights


@dataclass
class AttnRank:
    tp: int
    qkv: torch.Tensor  # [(nq_r + 2 nkv_r) d, H] rows in [Q_r; K_r; V_r] order
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
class VocabRank:
    tp: int
    weight: torch.Tensor  # [V_r, H] local rows, sorted by global id
    ids: np.ndarray  # global vocab ids of those rows (contiguous ranges in practice)


@dataclass
class Layer:
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    attn: list[AttnRank]
    mlp: list[MlpRank]


@dataclass
class NativeOutput:
    layers: list[torch.Tensor]  # hidden state after each decoder layer [B, S, H]
    final_norm: torch.Tensor  # [B, S, H]
    logits: torch.Tensor  # [B, S, V] (padded vocab of the checkpoint)


class NativeLlama:
    """The forward of a Nanotron LLaMA checkpoint, computed rank by rank from its shard files."""

    def __init__(self, ckpt: NanotronCheckpoint | str | os.PathLike, dtype="fp32", backend: str = "auto",
                 device: str | torch.device | None = None, numerics: str = "hf"):
        self.ck = ckpt if isinstance(ckpt, NanotronCheckpoint) else read_checkpoint(ckpt)
        self.dtype = torch_dtype(dtype)
        self.device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.backend = K.resolve_backend(backend, self.device)
        if numerics not in K.NUMERICS:
            raise ValueError(f"unknown numerics {numerics!r}: choose one of {', '.join(K.NUMERICS)}")
        self.numerics = numerics
        self.spec = self.ck.spec
        self.interleaved = self.ck.rope_interleaved
        self.notes: list[str] = []
        self._load()

    # -- loading -------------------------------------------------------------------------------
    def _tensor(self, s: Shard) -> torch.Tensor:
        return map_tensor(s.ref).to(device=self.device, dtype=self.dtype)

    def _norm(self, name: str) -> torch.Tensor:
        p = self.ck.params[name]
        if len(p.shards) != 1:
            raise NanokernError(f"{name}: expected one unsharded file, found {len(p.shards)}", p.shards[0].ref.path)
        return self._tensor(p.shards[0]).reshape(p.shape)

    def _vocab(self, name: str) -> list[VocabRank]:
        p = self.ck.params[name]
        out = []
        for r, s in sorted(_by_rank(p).items()):
            loc, glo = _local_index(_row_segments(s, self.spec.hidden_size), 0, p.shape[0])
            out.append(VocabRank(r, _take_rows(self._tensor(s), loc, 0), glo))
        return out

    def _attn(self, i: int) -> list[AttnRank]:
        sp = self.spec
        d, H = sp.head_dim, sp.hidden_size
        Q, KV = sp.q_rows, sp.kv_rows
        n_rep = sp.num_attention_heads // sp.num_key_value_heads
        qkv = _by_rank(self.ck.params[D.qkv().nt_name(i)])
        o = _by_rank(self.ck.params[D.O_PROJ.nt_name(i)])
        if set(qkv) != set(o):
            raise NanokernError(f"layer {i}: qkv_proj has TP ranks {sorted(qkv)} but o_proj {sorted(o)}", self.ck.step_dir)
        ranks = []
        for r in sorted(qkv):
            s = qkv[r]
            segs = _row_segments(s, H)
            lq, gq = _local_index(segs, 0, Q)
            lk, gk = _local_index(segs, Q, Q + KV)
            lv, gv = _local_index(segs, Q + KV, Q + 2 * KV)
            q_heads = _heads(gq, d, 0, "q", s.ref.path)
            k_heads = _heads(gk, d, Q, "k", s.ref.path)
            v_heads = _heads(gv, d, Q + KV, "v", s.ref.path)
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
            w = _take_rows(self._tensor(s), order, 0)
            # o_proj: the rank's row-parallel slice must be the columns of its q heads
            os_ = o[r]
            cols_need = np.concatenate([np.arange(h * d, (h + 1) * d) for h in q_heads])
            lo, go = _local_index(_col_segments(os_, H), 0, Q)
            pos = {int(g): int(l) for l, g in zip(lo, go)}
            missing = [int(c) for c in cols_need if int(c) not in pos]
            if missing or len(go) != len(cols_need):
                raise NanokernError(
                    f"o_proj TP rank {r} holds columns {_ranges(go)} but qkv_proj TP rank {r} produces heads {q_heads} "
                    f"(columns {_ranges(cols_need)})", os_.ref.path,
                )
            wo = _take_rows(self._tensor(os_), np.array([pos[int(c)] for c in cols_need], np.int64), 1)
            as_stored = np.array_equal(order, np.arange(len(order))) and len(order) == s.ref.shape[0]
            ranks.append(AttnRank(r, w, q_heads, k_heads, wo, as_stored))
        return ranks

    def _mlp(self, i: int) -> list[MlpRank]:
        sp = self.spec
        H, I = sp.hidden_size, sp.intermediate_size
        gu = _by_rank(self.ck.params[D.dense_mlp()[0].nt_name(i)])
        dn = _by_rank(self.ck.params[D.dense_mlp()[1].nt_name(i)])
        if set(gu) != set(dn):
            raise NanokernError(f"layer {i}: gate_up_proj has TP ranks {sorted(gu)} but down_proj {sorted(dn)}", self.ck.step_dir)
        ranks = []
        for r in sorted(gu):
            s = gu[r]
            segs = _row_segments(s, H)
            lg, gg = _local_index(segs, 0, I)
            lu, gu_ = _local_index(segs, I, 2 * I)
            if not np.array_equal(gg, gu_ - I):
                raise NanokernError(f"TP rank {r} holds gate rows {_ranges(gg)} but up rows {_ranges(gu_ - I)}", s.ref.path)
            w = _take_rows(self._tensor(s), np.concatenate([lg, lu]), 0)
            ds = dn[r]
            ld, gd = _local_index(_col_segments(ds, H), 0, I)
            pos = {int(g): int(l) for l, g in zip(ld, gd)}
            if len(gd) != len(gg) or any(int(c) not in pos for c in gg):
                raise NanokernError(
                    f"down_proj TP rank {r} holds columns {_ranges(gd)} but gate_up_proj TP rank {r} produces {_ranges(gg)}", ds.ref.path
                )
            wd = _take_rows(self._tensor(ds), np.array([pos[int(c)] for c in gg], np.int64), 1)
            ranks.append(MlpRank(r, w, wd))
        return ranks

    def _load(self) -> None:
        sp = self.spec
        if sp.head_dim % 2:
            raise NanokernError(f"odd head_dim {sp.head_dim}: RoPE needs an even head dimension", self.ck.step_dir)
        self.embed = self._vocab(L.EMBED_NT)
        if sp.tie_word_embeddings or L.LM_HEAD_NT not in self.ck.params:
            self.lm_head = self.embed
            self.notes.append("tied embeddings: lm_head uses the embedding shards")
        else:
            self.lm_head = self._vocab(L.LM_HEAD_NT)
        self.layers = []
        for i in range(sp.num_hidden_layers):
            self.layers.append(Layer(
                self._norm(D.INPUT_NORM.nt_name(i)),
                self._norm(D.POST_NORM.nt_name(i)),
                self._attn(i),
                self._mlp(i),
            ))
        self.final_norm = self._norm(L.FINAL_NORM_NT)
        if not all(a.fused_as_stored for layer in self.layers for a in layer.attn):
            self.notes.append("some qkv shards were not stored as [Q_r; K_r; V_r]: rows reordered by their slice metadata")

    # -- forward -------------------------------------------------------------------------------
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Vocab-parallel lookup: each rank its own id range, masked, then summed over ranks."""
        out = None
        for vr in self.embed:
            ids_np = vr.ids
            lo, hi = int(ids_np[0]), int(ids_np[-1]) + 1
            if hi - lo != len(ids_np):
                raise NanokernError("embedding shard with a non-contiguous vocab range", self.ck.step_dir)
            mask = (ids >= lo) & (ids < hi)
            local = torch.where(mask, ids - lo, torch.zeros_like(ids))
            part = F.embedding(local, vr.weight) * mask[..., None].to(self.dtype)
            out = part if out is None else out + part
        return out

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        V = self.spec.vocab_size
        out = torch.empty((*h.shape[:-1], V), dtype=self.dtype, device=h.device)
        for vr in self.lm_head:
            out[..., torch.from_numpy(vr.ids).to(h.device)] = F.linear(h, vr.weight)
        return out

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> NativeOutput:
        sp = self.spec
        ids = ids.to(self.device)
        if ids.dim() != 2:
            raise ValueError(f"input ids must be [batch, seq], got {tuple(ids.shape)}")
        if int(ids.min()) < 0 or int(ids.max()) >= sp.vocab_size:
            raise ValueError(f"token ids must be in [0, {sp.vocab_size})")
        B, S = ids.shape
        T = B * S
        d = sp.head_dim
        be, nm = self.backend, self.numerics
        pos = torch.arange(S, device=self.device).repeat(B)
        cos, sin = K.rope_tables(S, d, sp.rope_theta, self.dtype, self.device)
        x = self.embed_tokens(ids).reshape(T, sp.hidden_size)
        hidden = []
        for layer in self.layers:
            h = K.rms_norm(x, layer.input_norm, sp.rms_norm_eps, be, nm)
            attn = None
            for a in layer.attn:
                nq, nkv = len(a.q_heads), len(a.kv_heads)
                qkv = F.linear(h, a.qkv)  # [T, (nq + 2 nkv) d] = [Q_r | K_r | V_r]
                qk = K.rope(qkv, pos, cos, sin, nq + nkv, d, self.interleaved, be, nm)
                q = qk[:, :nq].reshape(B, S, nq, d)
                k = qk[:, nq:].reshape(B, S, nkv, d)
                v = qkv[:, (nq + nkv) * d:].reshape(B, S, nkv, d)
                o = K.attention(q, k, v, True, be).reshape(T, nq * d)
                part = F.linear(o, a.o)
                attn = part if attn is None else attn + part  # all-reduce of the row-parallel o_proj
            x = x + attn
            h = K.rms_norm(x, layer.post_norm, sp.rms_norm_eps, be, nm)
            mlp = None
            for m in layer.mlp:
                act = K.swiglu(F.linear(h, m.gate_up), be)
                part = F.linear(act, m.down)
                mlp = part if mlp is None else mlp + part  # all-reduce of the row-parallel down_proj
            x = x + mlp
            hidden.append(x.reshape(B, S, -1))
        fn = K.rms_norm(x, self.final_norm, sp.rms_norm_eps, be, nm)
        return NativeOutput(hidden, fn.reshape(B, S, -1), self.logits(fn).reshape(B, S, -1))

    __call__ = forward


def _ranges(idx) -> str:
    idx = [int(x) for x in idx]
    if not idx:
        return "[]"
    parts, start, prev = [], idx[0], idx[0]
    for x in idx[1:]:
        if x != prev + 1:
            parts.append(f"{start}:{prev + 1}")
            start = x
        prev = x
    parts.append(f"{start}:{prev + 1}")
    return "[" + ", ".join(parts) + "]"
