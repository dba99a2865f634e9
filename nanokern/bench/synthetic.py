"""Synthetic Nanotron checkpoints of real LLaMA shapes, of every family in the architecture
table (`arch`: llama, qwen2 = q/k/v bias + sliding window, smollm3 = NoPE layers, moe =
Qwen2-MoE with a shared expert), written by streaming and cached."""

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

from nanokern import arch
from nanokern.arch import decoder, nanotron_config
from nanokern.arch.kinds import Kind, Param
from nanokern.arch.spec import ModelSpec, MoeSpec
from nanokern.bench.common import GEN_VERSION, ITEMSIZE, ST_DTYPES
from nanokern.formats.nanotron import layout as L
from nanokern.io import dtypes


ARCHS = ("llama", "qwen2", "smollm3", "moe")


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    arch: str = "llama"

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def spec(self) -> ModelSpec:
        """The model: LLaMA shapes plus the family's features (MoE: 8 experts of a quarter width,
        top-2, and a shared expert of the same width, on every layer)."""
        features = {
            "llama": {},
            "qwen2": {"attention_bias": True, "sliding_window": 4096},
            "smollm3": {"no_rope_layer": 4 if self.layers % 4 == 0 else self.layers},
            "moe": {"moe": MoeSpec(8, 2, self.intermediate // 4, self.intermediate // 4, list(range(self.layers)))},
        }[self.arch]
        return ModelSpec(self.hidden, self.intermediate, self.layers, self.heads, self.kv_heads, self.vocab,
                         rms_norm_eps=1e-5, max_position_embeddings=128, **features)

    def params(self) -> int:
        spec = self.spec()
        return sum(math.prod(_nt_shape(name, p, spec)) for name, p, _i in decoder.nanotron_params(spec))

    def largest_tensor(self) -> tuple[str, int]:
        """(name, elements) of the largest tensor of the converted (HF) model."""
        spec = self.spec()
        family = arch.choose(spec, None, "synthetic")
        name, shape, *_ = max(family.hf_tensors(spec), key=lambda t: math.prod(t[1]))
        return name, math.prod(shape)


def _nt_shape(name: str, p: Param, spec: ModelSpec) -> tuple[int, ...]:
    return (sum(p.sizes(spec)),) if name.endswith(".bias") else p.nt_shape(spec)


def choose_shape(nbytes: int, dtype: str, tp: int, arch_name: str = "llama") -> Shape:
    """LLaMA-3-8B shapes (hidden 4096, intermediate 14336, 32 q / 8 kv heads, vocab 128256);
    the number of layers, then the vocab, scaled to land just under `nbytes`. Below one real
    layer (872 MB in fp32), hidden/intermediate/head_dim shrink by powers of two instead."""
    isz = ITEMSIZE[dtype]
    vmult = 128 * tp  # Nanotron pads the vocab to a multiple of make_vocab_size_divisible_by * TP
    for k in (1, 2, 4, 8, 16, 32):
        s = Shape(1, 4096 // k, 14336 // k, 32, 8, vmult, arch_name)
        if s.params() * isz <= nbytes:
            break
    row = 2 * s.hidden * isz
    layer = s.params() * isz - vmult * row - s.hidden * isz  # one decoder layer
    full_vocab = 128256 if k == 1 else 128256 // k
    full_vocab -= full_vocab % vmult
    if nbytes >= layer + full_vocab * row:
        layers = max(1, (nbytes - full_vocab * row) // layer)
        vocab = full_vocab
    else:
        layers = max(1, (nbytes - vmult * row) // layer)
        vocab = (nbytes - layers * layer - s.hidden * isz) // row
    vocab = max(vmult, vocab - vocab % vmult)
    return Shape(int(layers), s.hidden, s.intermediate, s.heads, s.kv_heads, int(vocab), arch_name)


def _fmt(s) -> str:
    return "None,None,None" if s is None else f"{s[0]},{s[1]},None"


@dataclass
class ShardFile:
    path: str  # relative to the step folder
    shape: tuple[int, ...]
    metadata: dict[str, str]
    norm: bool = False
    fp32: bool = False  # stored float32 whatever the checkpoint dtype (the MoE router)


def shard_files(shape: Shape, tp: int, pp: int) -> list[ShardFile]:
    """Every weight file of the checkpoint, with its stored shape and exact metadata, from the
    architecture table's parameter kinds."""
    spec = shape.spec()
    owner = L.pp_stage_blocks(spec, shape.vocab, pp)
    files: list[ShardFile] = []

    def sharded(param: str, full: tuple[int, ...], chunks: list[int], dim: int):
        p = owner[L.block_of(param)]
        for t in range(tp):
            pairs, loc0, g0 = [], 0, 0
            for c in chunks:
                n = c // tp
                lsl, gsl = [None] * len(full), [None] * len(full)
                gsl[dim] = (g0 + t * n, g0 + (t + 1) * n)
                if len(chunks) > 1:
                    lsl[dim] = (loc0, loc0 + n)
                pairs.append("|".join(_fmt(s) for s in lsl) + "#" + "|".join(_fmt(s) for s in gsl))
                loc0 += n
                g0 += c
            local = list(full)
            local[dim] //= tp
            md = {"version": "1.5", "local_global_slices_pairs": ";".join(pairs), "unsharded_shape": str(tuple(full))}
            files.append(ShardFile(L.param_path(param, p, pp, t, tp), tuple(local), md))

    for name, param, _i in decoder.nanotron_params(spec):
        full = _nt_shape(name, param, spec)
        dim = param.split_dim()
        if dim is None:  # replicated and expert tensors: one file, no rank suffix, empty metadata
            files.append(ShardFile(L.param_path(name), full, {}, norm=param.kind is Kind.REPLICATED and len(full) == 1,
                                   fp32=param.fp32))
        else:
            sharded(name, full, param.sizes(spec) if param.kind is Kind.COLUMN else [full[dim]], dim)
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

    tdt = dtypes.parse(dtype).torch
    if sf.fp32:
        dtype, tdt = "fp32", torch.float32
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
    """model_config.json as Nanotron's trainer writes it (LlamaConfig for llama, else Qwen2Config)."""
    spec = shape.spec()
    return nanotron_config.model_config(spec, "llama" if shape.arch == "llama" else "qwen2", shape.vocab, False, {}, [], "synthetic")


def write_checkpoint(root: Path, shape: Shape, tp: int, pp: int, dtype: str, seed: int = 0) -> Path:
    """A Nanotron checkpoints_path: latest.txt ("0") and step folder 0/ (model/, model_config.json)."""
    step = root / "0"
    for sf in shard_files(shape, tp, pp):
        write_shard(step / sf.path, sf, dtype, seed ^ zlib.crc32(sf.path.encode()))
    (step / "model_config.json").write_text(json.dumps(model_config(shape)))
    (root / "latest.txt").write_text("0")
    return root


def cached_checkpoint(cache_dir: Path, nbytes: int, tp: int, pp: int, dtype: str, echo=None,
                      arch_name: str = "llama") -> tuple[Path, Shape]:
    """The synthetic checkpoint for (family, size, dtype, TP, PP), generated once into the cache."""
    shape = choose_shape(nbytes, dtype, tp, arch_name)
    tag = "" if arch_name == "llama" else f"{arch_name}-"
    root = cache_dir / f"nt-{tag}{nbytes}B-{dtype}-tp{tp}-pp{pp}-g{GEN_VERSION}"
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
