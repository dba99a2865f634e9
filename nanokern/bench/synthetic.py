"""Synthetic Nanotron checkpoints of real LLaMA shapes, written by streaming and cached."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from nanokern.bench.common import GEN_VERSION, ITEMSIZE, ST_DTYPES


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def layer_params(self) -> int:
        H, I, d = self.hidden, self.intermediate, self.head_dim
        return H * (self.heads + 2 * self.kv_heads) * d + H * self.heads * d + 3 * I * H + 2 * H

    def params(self) -> int:
        return self.layers * self.layer_params() + 2 * self.vocab * self.hidden + self.hidden

    def hf_tensors(self) -> dict[str, tuple[int, ...]]:
        """HF names and shapes in state_dict order (untied: lm_head present)."""
        H, I, d = self.hidden, self.intermediate, self.head_dim
        out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab, H)}
        for i in range(self.layers):
            p = f"model.layers.{i}."
            out[p + "self_attn.q_proj.weight"] = (self.heads * d, H)
            out[p + "self_attn.k_proj.weight"] = (self.kv_heads * d, H)
            out[p + "self_attn.v_proj.weight"] = (self.kv_heads * d, H)
            out[p + "self_attn.o_proj.weight"] = (H, self.heads * d)
            out[p + "mlp.gate_proj.weight"] = (I, H)
            out[p + "mlp.up_proj.weight"] = (I, H)
            out[p + "mlp.down_proj.weight"] = (H, I)
            out[p + "input_layernorm.weight"] = (H,)
            out[p + "post_attention_layernorm.weight"] = (H,)
        out["model.norm.weight"] = (H,)
        out["lm_head.weight"] = (self.vocab, H)
        return out

    def largest_tensor(self) -> tuple[str, int]:
        """(name, elements) of the largest tensor of the converted (HF) model."""
        name, shape = max(self.hf_tensors().items(), key=lambda kv: math.prod(kv[1]))
        return name, math.prod(shape)


def choose_shape(nbytes: int, dtype: str, tp: int) -> Shape:
    """LLaMA-3-8B shapes (hidden 4096, intermediate 14336, 32 q / 8 kv heads, vocab 128256);
    the number of layers, then the vocab, scaled to land just under `nbytes`. Below one real
    layer (872 MB in fp32), hidden/intermediate/head_dim shrink by powers of two instead."""
    isz = ITEMSIZE[dtype]
    vmult = 128 * tp  # Nanotron pads the vocab to a multiple of make_vocab_size_divisible_by * TP
    for k in (1, 2, 4, 8, 16, 32):
        s = Shape(1, 4096 // k, 14336 // k, 32, 8, vmult)
        if s.params() * isz <= nbytes:
            break
    layer, row = s.layer_params() * isz, 2 * s.hidden * isz
    full_vocab = 128256 if k == 1 else 128256 // k
    full_vocab -= full_vocab % vmult
    if nbytes >= layer + full_vocab * row:
        layers = max(1, (nbytes - full_vocab * row) // layer)
        vocab = full_vocab
    else:
        layers = max(1, (nbytes - vmult * row) // layer)
        vocab = (nbytes - layers * layer - s.hidden * isz) // row
    vocab = max(vmult, vocab - vocab % vmult)
    return Shape(int(layers), s.hidden, s.intermediate, s.heads, s.kv_heads, int(vocab))


def pp_owner(shape: Shape, pp: int) -> list[int]:
    """PP rank of each block [embedding, decoder 0..L-1, final norm, lm_head] (Nanotron's
    cost-based split in build_model)."""
    H, I, d = shape.hidden, shape.intermediate, shape.head_dim
    costs = [0] + [4 * shape.heads * d * H + 3 * I * H] * shape.layers + [0, shape.vocab * H, 0, 0]
    total = sum(costs)
    owner, k, cum = [], 0, 0
    for c in costs:
        owner.append(k)
        cum += c
        if k < pp - 1 and cum > total * ((k + 1) / pp):
            k += 1
    return owner


def _fmt(s) -> str:
    return "None,None,None" if s is None else f"{s[0]},{s[1]},None"


@dataclass
class ShardFile:
    path: str  # relative to the step folder
    shape: tuple[int, ...]
    metadata: dict[str, str]
    norm: bool = False


def shard_files(shape: Shape, tp: int, pp: int) -> list[ShardFile]:
    """Every weight file of the checkpoint, with its stored shape and exact metadata."""
    H, I, d, nq, nkv, V = shape.hidden, shape.intermediate, shape.head_dim, shape.heads, shape.kv_heads, shape.vocab
    owner = pp_owner(shape, pp)
    files: list[ShardFile] = []

    def path(param: str, p: int | None = None, t: int | None = None) -> str:
        parts = param.split(".")
        suffix = "" if p is None else f"_pp-rank-{p}-of-{pp}_tp-rank-{t}-of-{tp}"
        return "/".join(["model", *parts[:-1], f"model_{parts[-1]}{suffix}.safetensors"])

    def sharded(param: str, full: tuple[int, int], p: int, chunks: list[int] | None = None, dim: int = 0):
        sizes = chunks or [full[dim]]
        for t in range(tp):
            pairs, loc0, g0 = [], 0, 0
            for c in sizes:
                n = c // tp
                lsl, gsl = [None, None], [None, None]
                gsl[dim] = (g0 + t * n, g0 + (t + 1) * n)
                if chunks:
                    lsl[dim] = (loc0, loc0 + n)
                pairs.append("|".join(_fmt(s) for s in lsl) + "#" + "|".join(_fmt(s) for s in gsl))
                loc0 += n
                g0 += c
            local = list(full)
            local[dim] //= tp
            md = {"version": "1.5", "local_global_slices_pairs": ";".join(pairs), "unsharded_shape": str(tuple(full))}
            files.append(ShardFile(path(param, p, t), tuple(local), md))

    def plain(param: str):
        files.append(ShardFile(path(param), (H,), {}, norm=True))

    sharded("model.token_position_embeddings.pp_block.token_embedding.weight", (V, H), owner[0])
    for i in range(shape.layers):
        nt, p = f"model.decoder.{i}.pp_block.", owner[1 + i]
        sharded(nt + "attn.qkv_proj.weight", ((nq + 2 * nkv) * d, H), p, chunks=[nq * d, nkv * d, nkv * d])
        sharded(nt + "attn.o_proj.weight", (H, nq * d), p, dim=1)
        sharded(nt + "mlp.gate_up_proj.weight", (2 * I, H), p, chunks=[I, I])
        sharded(nt + "mlp.down_proj.weight", (H, I), p, dim=1)
        plain(nt + "input_layernorm.weight")
        plain(nt + "post_attention_layernorm.weight")
    plain("model.final_layer_norm.pp_block.weight")
    sharded("model.lm_head.pp_block.weight", (V, H), owner[shape.layers + 2])
    return files


def safetensors_header(st_dtype: str, shape: tuple[int, ...], nbytes: int, metadata: dict[str, str]) -> bytes:
    """A one-tensor ("data") header as safetensors' save_file writes it: compact JSON,
    __metadata__ first (present even when empty), space-padded to a multiple of 8."""
    obj = {"__metadata__": metadata, "data": {"dtype": st_dtype, "shape": list(shape), "data_offsets": [0, nbytes]}}
    raw = json.dumps(obj, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write_shard(path: Path, sf: ShardFile, dtype: str, seed: int, chunk_bytes: int = 16 << 20) -> int:
    """Stream one shard file: header, then random data generated `chunk_bytes` at a time."""
    import torch

    tdt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    numel = math.prod(sf.shape)
    nbytes = numel * ITEMSIZE[dtype]
    g = torch.Generator().manual_seed(seed)
    step = max(1, chunk_bytes // 4)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(safetensors_header(ST_DTYPES[dtype], sf.shape, nbytes, sf.metadata))
        done = 0
        while done < numel:
            n = min(step, numel - done)
            x = torch.randn(n, generator=g)
            x = x.mul_(0.1).add_(1.0) if sf.norm else x.mul_(0.02)
            x = x.to(tdt)
            f.write(x.view(torch.uint8).numpy().data)
            done += n
    return nbytes


def model_config(shape: Shape) -> dict:
    """model_config.json as Nanotron's trainer writes it (LlamaConfig field order)."""
    return {"bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": shape.hidden,
            "initializer_range": 0.02, "intermediate_size": shape.intermediate, "is_llama_config": True,
            "max_position_embeddings": 128, "num_attention_heads": shape.heads,
            "num_hidden_layers": shape.layers, "num_key_value_heads": shape.kv_heads, "pad_token_id": None,
            "pretraining_tp": 1, "rms_norm_eps": 1e-5, "rope_scaling": None, "rope_theta": 10000.0,
            "tie_word_embeddings": False, "use_cache": True, "vocab_size": shape.vocab, "rope_interleaved": False}


def write_checkpoint(root: Path, shape: Shape, tp: int, pp: int, dtype: str, seed: int = 0) -> Path:
    """A Nanotron checkpoints_path: latest.txt ("0") and step folder 0/ (model/, model_config.json)."""
    step = root / "0"
    for sf in shard_files(shape, tp, pp):
        write_shard(step / sf.path, sf, dtype, seed ^ zlib.crc32(sf.path.encode()))
    (step / "model_config.json").write_text(json.dumps(model_config(shape)))
    (root / "latest.txt").write_text("0")
    return root


def cached_checkpoint(cache_dir: Path, nbytes: int, tp: int, pp: int, dtype: str, echo=None) -> tuple[Path, Shape]:
    """The synthetic checkpoint for (size, dtype, TP, PP), generated once into the cache."""
    shape = choose_shape(nbytes, dtype, tp)
    root = cache_dir / f"nt-{nbytes}B-{dtype}-tp{tp}-pp{pp}-g{GEN_VERSION}"
    if (root / "latest.txt").is_file():
        return root, shape
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f"{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if echo:
        echo(f"generating {root.name}: {shape.layers} layer(s), hidden {shape.hidden}, vocab {shape.vocab}, "
             f"{shape.params() * ITEMSIZE[dtype] / 1e9:.3f} GB ...")
    t0 = time.perf_counter()
    try:
        write_checkpoint(tmp, shape, tp, pp, dtype)
        os.sync()
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if echo:
        echo(f"generated in {time.perf_counter() - t0:.1f} s")
    return root, shape
