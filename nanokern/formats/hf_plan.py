"""The HF plan: every output tensor of a HF folder as save_pretrained writes it (names in state_dict
order, dtypes, shards, index, config.json, generation_config.json, tokenizer files), made from a
logical model read from any source (formats/hf.py reads HF folders, formats/nanotron/ the rest)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from nanokern.arch.hf_config import transformers_version
from nanokern.arch.spec import ModelSpec
from nanokern.errors import NanokernError
from nanokern.formats import tokenizer as tok
from nanokern.io import dtypes
from nanokern.io.units import parse_size
from nanokern.plan import OutFile, OutTensor, Plan, Source, fp8, resolve
from nanokern.plan.model import Model, shape2d


def generation_config(spec: ModelSpec) -> dict:
    g = {"_from_model_config": True, "bos_token_id": spec.bos_token_id, "eos_token_id": spec.eos_token_id}
    if spec.pad_token_id is not None:
        g["pad_token_id"] = spec.pad_token_id
    g.update({"output_attentions": False, "output_hidden_states": False, "transformers_version": transformers_version(), "use_cache": True})
    return g


def dump_json(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def plan_hf(
    model: Model,
    dtype: str = "bf16",
    vocab_size: int | None = None,
    max_shard_size: str | int = "5GB",
    tokenizer: str | None = None,
    fp8_scale: str = "float",
) -> Plan:
    spec = model.spec
    fp8_out = dtypes.is_fp8(dtype)  # FP8 Linear weights, the rest bf16 (plan/fp8.py)
    fp8.check_scale_fmt(fp8_scale, dtype, model.path)
    out_dtype = dtypes.resolve("bf16" if fp8_out else dtype, model.dtype)
    V = spec.vocab_size if vocab_size is None else vocab_size
    if not 0 < V <= spec.vocab_size:
        raise NanokernError(f"--vocab-size {V} must be in 1..{spec.vocab_size} (the rows stored)", model.path)
    warnings = list(model.warnings)
    aux: dict[str, bytes] = {}
    out_spec = dataclasses.replace(spec)
    if tokenizer is not None:
        files = tok.tokenizer_files(tokenizer)
        ids, tok_vocab = tok.special_token_ids(files)
        if tok_vocab is not None and tok_vocab > V:
            raise NanokernError(f"tokenizer has {tok_vocab} tokens but the exported vocab has {V} rows", tokenizer)
        if tok_vocab is not None and tok_vocab < V:
            warnings.append(f"the tokenizer has {tok_vocab} tokens, the export {V} rows (padding): --vocab-size {tok_vocab} drops the rest")
        for k, v in ids.items():
            have = getattr(out_spec, f"{k}_token_id")
            if v is not None and have != v:
                warnings.append(f"{k}_token_id {have} in the model config disagrees with the tokenizer ({v}): using {v}")
                setattr(out_spec, f"{k}_token_id", v)
        aux.update(files)
    aux["config.json"] = dump_json(model.family.hf_config(out_spec, out_dtype.name, V))
    aux["generation_config.json"] = dump_json(generation_config(out_spec))

    tensors, zeros, unquantized = [], [], []
    for name, shape, param, _part, _layer, _expert, is_bias in model.family.hf_tensors(spec, V):
        t = model.tensors.get(name)
        if t is None:  # the HF class has it, the source has not (e.g. Qwen2's q/k/v bias): zeros
            zeros.append(name)
            tensors.append(OutTensor(name, shape, out_dtype, []))
            continue
        rows, cols = shape2d(shape)
        # what Nanotron keeps in float32 whatever the model dtype (the MoE router) stays float32:
        # casting it would lose what training kept, and an import would not give it back
        kept = dtype == "keep" or (param.fp32 and t.dtype == dtypes.FLOAT32)
        sources = [Source(name, np.arange(rows, dtype=np.int64), 0, cols)]
        if fp8_out and fp8.quantizable(param, shape, is_bias):
            tensors.extend(fp8.quantized_pair(name, shape, sources, fp8_scale))
            continue
        if fp8_out and not is_bias and name.endswith(".weight"):
            unquantized.append(name)
        tensors.append(OutTensor(name, shape, t.dtype if kept else out_dtype, sources))
    if zeros:
        warnings.append(f"{model.family.hf_class} has {len(zeros)} tensor(s) the source does not ({zeros[0]}, ...): written as zeros")

    if fp8_out:
        cfg = json.loads(aux["config.json"])
        cfg["quantization_config"] = fp8.quantization_config(fp8.not_converted(unquantized), fp8_scale)
        aux["config.json"] = dump_json(cfg)

    limit = parse_size(max_shard_size)
    shards: list[list[OutTensor]] = []
    cur: list[OutTensor] = []
    cur_size = 0
    units: list[list[OutTensor]] = []  # an FP8 weight and its scales stay in one file, in this order
    for t in tensors:
        if t.quant == "scale_inv":
            units[-1].append(t)
        else:
            units.append([t])
    for unit in units:  # huggingface_hub's greedy split, in state_dict order
        nbytes = sum(t.nbytes for t in unit)
        if nbytes > limit:
            shards.append(unit)
            continue
        if cur and cur_size + nbytes > limit:
            shards.append(cur)
            cur, cur_size = [], 0
        cur.extend(unit)
        cur_size += nbytes
    if cur:
        shards.append(cur)
    n = len(shards)
    files = []
    for k, group in enumerate(shards):
        name = "model.safetensors" if n == 1 else f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        files.append(OutFile(name, sorted(group, key=lambda t: t.name), {"format": "pt"}))
    if n > 1:
        total_params = sum(int(np.prod(t.shape)) for t in tensors)
        index = {
            "metadata": {"total_parameters": total_params, "total_size": sum(t.nbytes for t in tensors)},
            "weight_map": {t.name: f.path for f in files for t in f.tensors},
        }
        aux["model.safetensors.index.json"] = dump_json(index)
    summary = {"dtype": dtypes.FLOAT8_E4M3.name if fp8_out else out_dtype.name, "vocab_size": V, "shards": n, "tied": spec.tie_word_embeddings,
               "hf_class": model.family.hf_class}
    return resolve(Plan(model, "hf", files, aux, warnings, summary))
