"""Plan a Nanotron checkpoint (any TP x PP) exactly as Nanotron's save_checkpoint writes it.

One tensor "data" per file, the model/model/... tree, `_pp-rank-P-of-PP_tp-rank-T-of-TP` on
every sharded parameter (also at TP=PP=1), norms unsharded with empty metadata, the three
metadata keys with Nanotron's slice encoding, PP ownership by Nanotron's cost-based split,
tied embeddings written once under PP rank 0, vocab padded to a multiple of K x TP with zero
rows, and the configs (model_config.json, checkpoint_metadata.json, config.yaml, latest.txt).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import yaml

from nanokern import rope
from nanokern.errors import NanokernError
from nanokern.formats import nanotron_layout as L
from nanokern.formats.hf import resolve_dtype
from nanokern.formats.slices import format_pairs, format_unsharded_shape
from nanokern.model import EMBED, FINAL_NORM, LM_HEAD, Model, hf_layer_names
from nanokern.plan import OutFile, OutTensor, Plan, Source, resolve

CHECKPOINT_VERSION = "1.5"
DTYPE_YAML = {torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float16: "float16"}
# LlamaConfig fields in dataclass order (nanotron HEAD), with defaults for fields a source lacks
MODEL_CONFIG_FIELDS = {
    "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": None, "initializer_range": 0.02,
    "intermediate_size": None, "is_llama_config": True, "max_position_embeddings": 2048, "num_attention_heads": None,
    "num_hidden_layers": None, "attention_bias": False, "num_key_value_heads": None, "pad_token_id": None,
    "pretraining_tp": 1, "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 10000.0, "rope_interleaved": False,
    "tie_word_embeddings": False, "use_cache": True, "vocab_size": None, "_attn_implementation": "flash_attention_2",
    "z_loss_enabled": False, "z_loss_coefficient": 0.0001,
}


def padded_vocab(v: int, divisible_by: int, tp: int) -> int:
    m = divisible_by * tp
    return int(math.ceil(v / m) * m)


def model_config(model: Model, vocab: int, interleaved: bool, warnings: list[str]) -> dict:
    s = model.spec
    base = dict(model.layout.get("model_config") or {})
    eos = s.eos_token_id
    if isinstance(eos, list):
        warnings.append(f"eos_token_id {eos} is a list; Nanotron's field is an int: writing {eos[0]}")
        eos = eos[0]
    values = {
        "bos_token_id": s.bos_token_id, "eos_token_id": eos, "hidden_act": s.hidden_act, "hidden_size": s.hidden_size,
        "initializer_range": s.initializer_range, "intermediate_size": s.intermediate_size,
        "max_position_embeddings": s.max_position_embeddings, "num_attention_heads": s.num_attention_heads,
        "num_hidden_layers": s.num_hidden_layers, "num_key_value_heads": s.num_key_value_heads,
        "pad_token_id": s.pad_token_id, "rms_norm_eps": s.rms_norm_eps, "rope_scaling": s.rope_scaling,
        "rope_theta": float(s.rope_theta), "rope_interleaved": interleaved,
        "tie_word_embeddings": s.tie_word_embeddings, "vocab_size": vocab,
    }
    return {k: values.get(k, base.get(k, default)) for k, default in MODEL_CONFIG_FIELDS.items()}


def _yaml_config(model: Model, mc: dict, tp: int, pp: int, dtype: torch.dtype, step: int) -> dict:
    src = model.layout.get("config_yaml")
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
    mod.update({"dtype": DTYPE_YAML[dtype], "model_config": dict(mc)})
    cfg["model"] = mod
    cfg.setdefault("tokenizer", {"tokenizer_max_length": None, "tokenizer_name_or_path": None, "tokenizer_revision": None})
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


def plan_nanotron(model: Model, tp: int = 1, pp: int = 1, dtype: str = "keep", vocab_size: int | None = None,
                  make_vocab_size_divisible_by: int = 1, rope_interleaved: bool = False) -> Plan:
    s = model.spec
    where = model.path
    if tp < 1 or pp < 1:
        raise NanokernError(f"--tp {tp} --pp {pp}: sizes must be >= 1", where)
    if s.num_key_value_heads % tp or s.num_attention_heads % tp:
        raise NanokernError(f"TP={tp} does not divide num_key_value_heads={s.num_key_value_heads} and "
                            f"num_attention_heads={s.num_attention_heads}: Nanotron shards whole heads (kv heads are never replicated)", where)
    if s.intermediate_size % tp:
        raise NanokernError(f"TP={tp} does not divide intermediate_size={s.intermediate_size}", where)
    if s.hidden_size % s.num_attention_heads or s.head_dim != s.hidden_size // s.num_attention_heads:
        raise NanokernError("Nanotron needs head_dim == hidden_size / num_attention_heads", where)
    if make_vocab_size_divisible_by < 1:
        raise NanokernError("--make-vocab-size-divisible-by must be >= 1", where)
    true_v = s.vocab_size if vocab_size is None else vocab_size
    if not 0 < true_v <= s.vocab_size:
        raise NanokernError(f"--vocab-size {true_v} must be in 1..{s.vocab_size} (the rows stored)", where)
    V = padded_vocab(true_v, make_vocab_size_divisible_by, tp)
    out_dtype = resolve_dtype(dtype, model.dtype)
    d, H, I = s.head_dim, s.hidden_size, s.intermediate_size
    q, kv = s.q_rows, s.kv_rows
    owner = L.pp_stage_blocks(s.num_hidden_layers, H, I, s.num_attention_heads, d, V, pp)
    warnings = list(model.warnings)
    files: list[OutFile] = []
    table = rope.nt_from_hf(d) if rope_interleaved else None

    def add_sharded(param, shape, split_dim, chunks, sources_for_rank):
        """chunks: [(logical tensor, global offset, size)] along split_dim (one entry when unchunked)."""
        p = owner[L.block_of(param)]
        local = list(shape)
        local[split_dim] //= tp
        for t in range(tp):
            sources, pairs, loc0 = [], [], 0
            for name, g0, size in chunks:
                n = size // tp
                lo, hi = g0 + t * n, g0 + (t + 1) * n
                sources += sources_for_rank(name, t, n, loc0)
                box_l = [(0, local[0]), (0, local[1])]
                box_g = [(0, shape[0]), (0, shape[1])]
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
            files.append(OutFile(path, [OutTensor("data", tuple(local), out_dtype, sources)], md))

    def row_sources(name, t, n, loc0, permute=False, limit=None):
        rows = _rows(t * n, (t + 1) * n)
        if permute and table is not None:
            rows = rope.permute_rows(rows, d, table)
        if limit is not None:
            rows = rows[rows < limit]
        if rows.size == 0:
            return []
        return [Source(name, rows, 0, H, loc0, 0)]

    def col_sources(name, t, n, loc0):
        return [Source(name, _rows(0, H), t * n, n, 0, loc0)]

    def vocab_param(param, name):
        add_sharded(param, (V, H), 0, [(name, 0, V)], lambda nm, t, n, l0: row_sources(nm, t, n, l0, limit=true_v))

    def norm(param, name):
        files.append(OutFile(L.param_path(param), [OutTensor("data", (H,), out_dtype, [Source(name, _rows(0, 1), 0, H)])], {}))

    vocab_param(L.EMBED_NT, EMBED)
    for i in range(s.num_hidden_layers):
        n = hf_layer_names(i)
        norm(L.layer_param(i, "input_layernorm"), n["input_norm"])
        qkv = {"q": n["q"], "k": n["k"], "v": n["v"]}
        add_sharded(L.layer_param(i, "attn.qkv_proj"), (q + 2 * kv, H), 0,
                    [(qkv["q"], 0, q), (qkv["k"], q, kv), (qkv["v"], q + kv, kv)],
                    lambda nm, t, m, l0: row_sources(nm, t, m, l0, permute=nm != qkv["v"]))
        add_sharded(L.layer_param(i, "attn.o_proj"), (H, q), 1, [(n["o"], 0, q)], col_sources)
        norm(L.layer_param(i, "post_attention_layernorm"), n["post_norm"])
        add_sharded(L.layer_param(i, "mlp.gate_up_proj"), (2 * I, H), 0, [(n["gate"], 0, I), (n["up"], I, I)], row_sources)
        add_sharded(L.layer_param(i, "mlp.down_proj"), (H, I), 1, [(n["down"], 0, I)], col_sources)
    norm(L.FINAL_NORM_NT, FINAL_NORM)
    if not s.tie_word_embeddings:
        vocab_param(L.LM_HEAD_NT, LM_HEAD)

    step_name = str(model.layout.get("step", "0"))
    step = int(step_name) if step_name.isdigit() else 0
    for f in files:
        f.path = f"{step_name}/{f.path}"
    mc = model_config(model, V, rope_interleaved, warnings)
    aux = {
        "latest.txt": step_name.encode(),
        f"{step_name}/model_config.json": json.dumps(mc).encode(),
        f"{step_name}/checkpoint_metadata.json": json.dumps(
            checkpoint_metadata(tp, step, model.layout.get("checkpoint_metadata")), indent=2, sort_keys=True).encode(),
        f"{step_name}/config.yaml": yaml.safe_dump(_yaml_config(model, mc, tp, pp, out_dtype, step)).encode(),
    }
    if V != s.vocab_size:
        warnings.append(f"vocab: {true_v} true rows, padded to {V} (multiple of {make_vocab_size_divisible_by} x TP={tp}); padding rows are zero")
    summary = {"tp": tp, "pp": pp, "dtype": DTYPE_YAML[out_dtype], "vocab_size": V, "rope_interleaved": rope_interleaved,
               "pp_owner": owner}
    return resolve(Plan(model, "nanotron", files, aux, warnings, summary))


def source_extras(step_dir: Path) -> dict:
    """Facts of a Nanotron source that a reshard carries over (configs)."""
    out = {"step": step_dir.name}
    cm = step_dir / "checkpoint_metadata.json"
    if cm.is_file():
        try:
            out["checkpoint_metadata"] = json.loads(cm.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            raise NanokernError(f"unreadable checkpoint metadata ({e})", cm) from None
    cy = step_dir / "config.yaml"
    if cy.is_file():
        try:
            out["config_yaml"] = yaml.safe_load(cy.read_text())
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
            raise NanokernError(f"unreadable config.yaml ({e})", cy) from None
    return out
