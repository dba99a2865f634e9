"""Plan a Nanotron checkpoint (any TP x PP, LlamaConfig or Qwen2Config) exactly as Nanotron's save_checkpoint writes it.

One tensor "data" per file, the model/model/... tree, `_pp-rank-P-of-PP_tp-rank-T-of-TP` on
every sharded parameter (also at TP=PP=1), replicated parameters (norms, MoE router, experts,
shared-expert gate) unsharded with empty metadata, the three metadata keys with Nanotron's slice
encoding, PP ownership by Nanotron's cost-based split, tied embeddings written once under PP
rank 0, vocab padded to a multiple of K x TP with zero rows, the router kept float32, and the
configs (model_config.json, checkpoint_metadata.json, config.yaml, latest.txt). Which parameters
exist and how each is stored comes from the architecture table (nanokern/arch).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from nanokern.arch import rope
from nanokern.arch import decoder, nanotron_config
from nanokern.arch.kinds import Kind
from nanokern.errors import NanokernError
from nanokern.formats.nanotron import layout as L
from nanokern.formats.tokenizer import has_tokenizer
from nanokern.io import dtypes
from nanokern.io.dtypes import DType
from nanokern.io.slices import format_pairs, format_unsharded_shape
from nanokern.plan.model import Model
from nanokern.plan import OutFile, OutTensor, Plan, Source, resolve

CHECKPOINT_VERSION = "1.5"


def padded_vocab(v: int, divisible_by: int, tp: int) -> int:
    m = divisible_by * tp
    return int(math.ceil(v / m) * m)


def _yaml_config(model: Model, mc: dict, tp: int, pp: int, dtype: DType, step: int) -> dict:
    src = model.layout.config_yaml if model.origin == "nanotron" else None
    cfg = dict(src) if isinstance(src, dict) else {}
    cfg.setdefault("general", {"project": "nanokern", "run": "converted", "seed": 42, "step": step,
                               "consumed_train_samples": 0, "benchmark_csv_path": None, "ignore_sanity_checks": True})
    ck = dict(cfg.get("checkpoints") or {"checkpoint_interval": 1000, "checkpoints_path": "checkpoints",
                                           "checkpoints_path_is_shared_file_system": False, "save_initial_state": False,
                                           "save_final_state": True, "resume_checkpoint_path": None})
    ck.update({"load_optimizer": False, "load_lr_scheduler": False})  # no optimizer state is written
    cfg["checkpoints"] = ck
    par = dict(cfg.get("parallelism") or {"dp": 1, "context_parallel_size": 1, "expert_parallel_size": 1,
                                           "pp_engine": "1f1b", "tp_mode": "REDUCE_SCATTER",
                                           "tp_linear_async_communication": True, "recompute_layer": False,
                                           "tp_recompute_allgather": True})
    par.update({"tp": tp, "pp": pp})
    cfg["parallelism"] = par
    mod = dict(cfg.get("model") or {"ddp_bucket_cap_mb": 25, "init_method": {"std": 0.025}, "make_vocab_size_divisible_by": 1})
    mod.update({"dtype": dtype.name, "model_config": dict(mc)})
    cfg["model"] = mod
    # an import names its source folder when it holds a tokenizer (an export finds it there)
    tok = str(Path(model.path).resolve()) if model.origin == "hf" and has_tokenizer(model.path) else None
    cfg.setdefault("tokenizer", {"tokenizer_max_length": None, "tokenizer_name_or_path": tok, "tokenizer_revision": None})
    return cfg


def checkpoint_metadata(tp: int, step: int, src: dict | None) -> dict:
    if src:
        md = dict(src)
        md["tp"] = tp
        return md
    return {
        "cp": 1, "custom_metas": None, "dp": 1, "tp": tp, "version": CHECKPOINT_VERSION,
        "metas": {"consumed_tokens_total": 0, "consumed_train_samples": 0, "last_stage_idx": 0, "last_train_step": step,
                  "data_stages": [{"consumed_tokens_per_dataset_folder": {}, "consumed_train_samples": 0,
                                   "name": "Stable Training Stage", "sequence_length": 2048, "start_training_step": 1}]},
    }


def _rows(a: int, b: int) -> np.ndarray:
    return np.arange(a, b, dtype=np.int64)


def default_config_class(model: Model) -> str:
    """A Nanotron source keeps its class, and so does a nanokern export of one (recorded in its
    manifest) when that class holds the model; a HF LlamaForCausalLM becomes a LlamaConfig (as
    before), every other family a Qwen2Config (what Nanotron builds by default)."""
    if model.origin == "nanotron":
        return model.layout.config_class
    recorded = getattr(model.layout, "nanotron_source", None)
    if recorded and nanotron_config.holds(model.spec, recorded[0]):
        return recorded[0]
    return "llama" if model.family.name == "llama" else "qwen2"


def plan_nanotron(model: Model, tp: int = 1, pp: int = 1, dtype: str = "keep", vocab_size: int | None = None,
                  make_vocab_size_divisible_by: int = 1, rope_interleaved: bool = False,
                  config_class: str | None = None) -> Plan:
    s = model.spec
    where = model.path
    if tp < 1 or pp < 1:
        raise NanokernError(f"--tp {tp} --pp {pp}: sizes must be >= 1", where)
    if s.num_key_value_heads % tp or s.num_attention_heads % tp:
        raise NanokernError(f"TP={tp} does not divide num_key_value_heads={s.num_key_value_heads} and "
                            f"num_attention_heads={s.num_attention_heads}: Nanotron shards whole heads (kv heads are never replicated)", where)
    if s.intermediate_size % tp:
        raise NanokernError(f"TP={tp} does not divide intermediate_size={s.intermediate_size}", where)
    if s.moe is not None and s.moe.enable_shared_expert and s.moe.shared_expert_intermediate_size % tp:
        raise NanokernError(f"TP={tp} does not divide shared_expert_intermediate_size={s.moe.shared_expert_intermediate_size}", where)
    if s.hidden_size % s.num_attention_heads or s.head_dim != s.hidden_size // s.num_attention_heads:
        raise NanokernError("Nanotron needs head_dim == hidden_size / num_attention_heads", where)
    if make_vocab_size_divisible_by < 1:
        raise NanokernError("--make-vocab-size-divisible-by must be >= 1", where)
    cls = config_class or default_config_class(model)
    if cls not in nanotron_config.CLASSES:
        raise ValueError(f"--nanotron-config {cls!r}: choose {' or '.join(nanotron_config.CLASSES)}")
    true_v = s.vocab_size if vocab_size is None else vocab_size
    if not 0 < true_v <= s.vocab_size:
        raise NanokernError(f"--vocab-size {true_v} must be in 1..{s.vocab_size} (the rows stored)", where)
    V = padded_vocab(true_v, make_vocab_size_divisible_by, tp)
    out_dtype = dtypes.resolve(dtype, model.dtype)
    d, H = s.head_dim, s.hidden_size
    owner = L.pp_stage_blocks(s, V, pp)
    warnings = list(model.warnings)
    files: list[OutFile] = []
    table = rope.nt_from_hf(d) if rope_interleaved else None

    def add_sharded(param, shape, split_dim, chunks, sources_for_rank, dt):
        """chunks: [(logical tensor, global offset, size, rope)] along split_dim (one entry when unchunked)."""
        p = owner[L.block_of(param)]
        local = list(shape)
        local[split_dim] //= tp
        for t in range(tp):
            sources, pairs, loc0 = [], [], 0
            for name, g0, size, rp in chunks:
                n = size // tp
                lo, hi = g0 + t * n, g0 + (t + 1) * n
                sources += sources_for_rank(name, t, n, loc0, rp)
                box_l = [(0, x) for x in local]
                box_g = [(0, x) for x in shape]
                box_l[split_dim] = (loc0, loc0 + n)
                box_g[split_dim] = (lo, hi)
                pairs.append((tuple(box_l), tuple(box_g)))
                loc0 += n
            md = {
                "version": CHECKPOINT_VERSION,
                "local_global_slices_pairs": format_pairs(pairs, split_dim, chunked=len(chunks) > 1),
                "unsharded_shape": format_unsharded_shape(shape),
            }
            path = L.param_path(param, p, pp, t, tp)
            files.append(OutFile(path, [OutTensor("data", tuple(local), dt, sources)], md))

    def row_sources(name, t, n, loc0, permute=False, limit=None, cols=H):
        rows = _rows(t * n, (t + 1) * n)
        if permute and table is not None:
            rows = rope.permute_rows(rows, d, table)
        if limit is not None:
            rows = rows[rows < limit]
        if rows.size == 0:
            return []
        return [Source(name, rows, 0, cols, loc0, 0)]

    for name, param, i in decoder.nanotron_params(s):
        dt = dtypes.FLOAT32 if param.fp32 else out_dtype
        hf = [param.hf_name(part, i) for part in param.parts]
        sizes = param.sizes(s, V)
        if param.kind is Kind.VOCAB:
            add_sharded(name, (V, H), 0, [(hf[0], 0, V, False)],
                        lambda nm, t, n, l0, rp: row_sources(nm, t, n, l0, limit=true_v), dt)
        elif param.kind is Kind.COLUMN:
            bias = name.endswith(".bias")
            chunks, g0 = [], 0
            for part, n in zip(param.parts, sizes):
                chunks.append((param.hf_name(part, i, bias=bias), g0, n, part.rope))
                g0 += n
            shape = (g0,) if bias else (g0, param.cols(s))
            cols = 1 if bias else param.cols(s)
            add_sharded(name, shape, 0, chunks, lambda nm, t, n, l0, rp, c=cols: row_sources(nm, t, n, l0, permute=rp, cols=c), dt)
        elif param.kind is Kind.ROW:
            rows = sizes[0]
            add_sharded(name, (rows, param.cols(s)), 1, [(hf[0], 0, param.cols(s), False)],
                        lambda nm, t, n, l0, rp, r=rows: [Source(nm, _rows(0, r), t * n, n, 0, l0)], dt)
        elif param.kind is Kind.REPLICATED:
            shape = param.nt_shape(s)
            rows, cols = (shape[0], 1) if len(shape) == 1 else shape
            files.append(OutFile(L.param_path(name), [OutTensor("data", shape, dt, [Source(hf[0], _rows(0, rows), 0, cols)])], {}))
        else:  # EXPERTS: [E, in, sum(parts)] <- each expert's [part, in] HF tensors, transposed
            E, cols, _ = shape = param.nt_shape(s)
            sources = []
            for e in range(E):
                off = 0
                for part, n in zip(param.parts, sizes):
                    sources.append(Source(param.hf_name(part, i, e), _rows(0, cols), 0, n, e * cols, off, transpose=True))
                    off += n
            files.append(OutFile(L.param_path(name), [OutTensor("data", shape, dt, sources)], {}))

    import yaml  # (here, not at start-up: only a plan that reads or writes config.yaml loads it)

    nt = model.layout if model.origin == "nanotron" else None
    step_name = nt.step if nt else "0"
    step = int(step_name) if step_name.isdigit() else 0
    for f in files:
        f.path = f"{step_name}/{f.path}"
    recorded = None if nt else getattr(model.layout, "nanotron_source", None)
    base = dict(nt.model_config) if nt else dict(recorded[1]) if recorded else {}  # the fields config.json lacks
    mc = nanotron_config.model_config(s, cls, V, rope_interleaved, base, warnings, where)
    aux = {
        "latest.txt": step_name.encode(),
        f"{step_name}/model_config.json": json.dumps(mc).encode(),
        f"{step_name}/checkpoint_metadata.json": json.dumps(
            checkpoint_metadata(tp, step, nt.checkpoint_metadata if nt else None), indent=2, sort_keys=True).encode(),
        f"{step_name}/config.yaml": yaml.safe_dump(_yaml_config(model, mc, tp, pp, out_dtype, step)).encode(),
    }
    if V != s.vocab_size:
        warnings.append(f"vocab: {true_v} true rows, padded to {V} (multiple of {make_vocab_size_divisible_by} x TP={tp}); padding rows are zero")
    summary = {"tp": tp, "pp": pp, "dtype": out_dtype.name, "vocab_size": V, "rope_interleaved": rope_interleaved,
               "pp_owner": owner, "nanotron_config": cls}
    return resolve(Plan(model, "nanotron", files, aux, warnings, summary))
