"""A Nanotron checkpoint as the logical HF-convention model: every parameter cut into HF tensors
by its kind (fused parts split, with the RoPE row permutation on q/k weights and biases when
the checkpoint is interleaved; experts transposed), as blocks of the shard files' bytes."""

from __future__ import annotations

import numpy as np

from nanokern import arch
from nanokern.arch import rope
from nanokern.arch.kinds import Kind, Param
from nanokern.arch.spec import ModelSpec
from nanokern.formats.nanotron import layout as L
from nanokern.formats.nanotron.checkpoint import NanotronCheckpoint, nt_params
from nanokern.formats.nanotron.files import source_extras
from nanokern.formats.nanotron.shards import NtParam, Shard
from nanokern.plan.model import Block, LogicalTensor, Model, NanotronLayout, as_2d, expert_view

def _pairs_2d(s: Shard):
    """The shard's slice pairs over 2-D views (1-D tensors as [N, 1] columns)."""
    for loc, glo in s.pairs:
        yield ((loc[0], (0, 1)), (glo[0], (0, 1))) if len(loc) == 1 else (loc, glo)


def _split_rows(p: NtParam, parts: list[tuple[str, int, int, np.ndarray | None, int]]) -> dict[str, LogicalTensor]:
    """Split a row-fused Nanotron param into logical tensors.

    parts: (hf name, first global row, rows, per-head permutation table or None, head dim).
    """
    out = {}
    cols = p.shape[1] if len(p.shape) == 2 else None
    for name, g0, n, table, d in parts:
        t = LogicalTensor(name, (n,) if cols is None else (n, cols), p.dtype)
        for s in p.shards:
            ref = as_2d(s.ref)
            for (lr, lc), (gr, gc) in _pairs_2d(s):
                a, b = max(gr[0], g0), min(gr[1], g0 + n)
                if a >= b:
                    continue
                g = np.arange(a, b, dtype=np.int64)
                src_rows = g - gr[0] + lr[0]
                dst_rows = g - g0
                if table is not None:
                    dst_rows = rope.permute_rows(dst_rows, d, table)
                t.blocks.append(Block(ref, src_rows, lc[0], dst_rows, gc[0], lc[1] - lc[0]))
        out[name] = t
    return out


def _plain(p: NtParam, name: str) -> LogicalTensor:
    t = LogicalTensor(name, p.shape, p.dtype)
    for s in p.shards:
        ref = as_2d(s.ref)
        for (lr, lc), (gr, gc) in _pairs_2d(s):
            rows = np.arange(lr[0], lr[1], dtype=np.int64)
            t.blocks.append(Block(ref, rows, lc[0], rows - lr[0] + gr[0], gc[0], lc[1] - lc[0]))
    return t


def _experts(p: NtParam, param: Param, spec: ModelSpec, layer: int) -> dict[str, LogicalTensor]:
    """[E, in, sum(parts)] input-major -> one [part, in] tensor per expert and part (transposed)."""
    (s,) = p.shards
    E, cols, _ = p.shape
    out = {}
    for e in range(E):
        ref = expert_view(s.ref, e)
        off = 0
        for part, n in zip(param.parts, param.sizes(spec)):
            name = param.hf_name(part, layer, e)
            rows = np.arange(n, dtype=np.int64)
            out[name] = LogicalTensor(name, (n, cols), p.dtype, [Block(ref, rows + off, 0, rows, 0, cols, transpose=True)])
            off += n
    return out


def to_model(ck: NanotronCheckpoint, rope_interleaved: bool | None = None, hf_arch: str | None = None) -> Model:
    """The logical HF-convention model of a checkpoint, named for the HF class that holds it
    (hf_arch forces one). rope_interleaved overrides the config."""
    spec = ck.spec
    family = arch.choose(spec, hf_arch, ck.step_dir / "model_config.json")
    interleaved = ck.rope_interleaved if rope_interleaved is None else rope_interleaved
    d = spec.head_dim
    table = rope.nt_from_hf(d) if interleaved else None
    tensors: dict[str, LogicalTensor] = {}
    for name, (param, i) in nt_params(spec).items():
        p = ck.params.get(name)
        if p is None:  # lm_head of a tied checkpoint
            continue
        if param.kind is Kind.EXPERTS:
            tensors.update(_experts(p, param, spec, i))
        elif param.kind is Kind.COLUMN:
            is_bias = name.endswith(".bias")
            parts, g0 = [], 0
            for part, n in zip(param.parts, param.sizes(spec)):
                parts.append((param.hf_name(part, i, bias=is_bias), g0, n, table if part.rope else None, d))
                g0 += n
            tensors.update(_split_rows(p, parts))
        else:
            name_hf = param.hf_name(param.parts[0], i)
            tensors[name_hf] = _plain(p, name_hf)
    order = [t[0] for t in family.hf_tensors(spec)]
    tensors = {k: tensors[k] for k in [*[n for n in order if n in tensors], *[n for n in tensors if n not in order]]}
    owner = L.pp_stage_blocks(spec, spec.vocab_size, ck.pp)
    layout = NanotronLayout(str(ck.step_dir), ck.tp, ck.pp, interleaved, sum(len(p.shards) for p in ck.params.values()),
                            owner, ck.bad_naming, ck.config_class, ck.config, **source_extras(ck.step_dir))
    return Model(spec, family, tensors, "nanotron", str(ck.step_dir), list(ck.warnings), layout)

