"""The naive baseline: hand-written glue (load every shard, torch.cat, split, cast, save_file)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path


def _parse_slice(text: str) -> slice:
    a, b, c = (None if x == "None" else int(x) for x in text.split(","))
    return slice(a, b, c)


def _parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(re.sub(r"np\.int64\((\d+)\)", r"\1", s)) for s in text.strip("()").split(",") if s.strip())


def naive_convert(src, dst, out_dtype: str = "keep", max_shard_size: int = 5 * 10**9) -> None:
    """Nanotron -> HF the straightforward way: load_file every shard, torch.cat the pieces along
    their global slices, split qkv / gate_up, cast, save_file per shard (greedy 5 GB split in
    state_dict order, like save_pretrained), index and config.json."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    step = src / (src / "latest.txt").read_text().strip() if (src / "latest.txt").is_file() else src
    cfg = json.loads((step / "model_config.json").read_text())
    if cfg.get("rope_interleaved", True):
        raise ValueError("naive baseline: interleaved RoPE checkpoints are not supported")
    H, I, nq, nkv = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = H // nq

    # 1. load every shard
    shards: dict[str, list] = {}
    for f in sorted((step / "model").rglob("*.safetensors")):
        name = ".".join(f.parent.relative_to(step / "model").parts) + ".weight"
        t = load_file(str(f))["data"]
        with safe_open(str(f), "pt") as h:
            md = h.metadata() or {}
        shards.setdefault(name, []).append((t, md))

    # 2. assemble full tensors: cat the local pieces in the order of their global slices
    def assemble(name: str) -> torch.Tensor:
        parts = shards.pop(name)
        if not parts[0][1]:
            return parts[0][0]
        full_shape = _parse_shape(parts[0][1]["unsharded_shape"])
        pieces = []
        for t, md in parts:
            for pair in md["local_global_slices_pairs"].split(";"):
                loc, glo = pair.split("#")
                gl = [_parse_slice(s) for s in glo.split("|")]
                pieces.append((gl, t[tuple(_parse_slice(s) for s in loc.split("|"))]))
        dim = next(i for i, s in enumerate(pieces[0][0]) if s != slice(None))
        pieces.sort(key=lambda p: p[0][dim].start)
        full = torch.cat([p[1] for p in pieces], dim=dim)
        if tuple(full.shape) != full_shape:
            raise ValueError(f"{name}: assembled {tuple(full.shape)}, metadata says {full_shape}")
        return full

    dt = {"keep": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[out_dtype]

    def cast(t: torch.Tensor, view: bool = False) -> torch.Tensor:
        if dt is not None and t.dtype != dt:
            return t.to(dt)
        # split() gives views of one storage, which save_file refuses: copy them out
        return t.clone() if view else t.contiguous()

    # 3. HF names, split the fused projections, cast
    hf: dict[str, torch.Tensor] = {}
    hf["model.embed_tokens.weight"] = cast(assemble("model.token_position_embeddings.pp_block.token_embedding.weight"))
    for i in range(cfg["num_hidden_layers"]):
        nt, p = f"model.decoder.{i}.pp_block.", f"model.layers.{i}."
        q, k, v = assemble(nt + "attn.qkv_proj.weight").split([nq * d, nkv * d, nkv * d])
        hf[p + "self_attn.q_proj.weight"] = cast(q, True)
        hf[p + "self_attn.k_proj.weight"] = cast(k, True)
        hf[p + "self_attn.v_proj.weight"] = cast(v, True)
        del q, k, v
        hf[p + "self_attn.o_proj.weight"] = cast(assemble(nt + "attn.o_proj.weight"))
        gate, up = assemble(nt + "mlp.gate_up_proj.weight").split([I, I])
        hf[p + "mlp.gate_proj.weight"] = cast(gate, True)
        hf[p + "mlp.up_proj.weight"] = cast(up, True)
        del gate, up
        hf[p + "mlp.down_proj.weight"] = cast(assemble(nt + "mlp.down_proj.weight"))
        hf[p + "input_layernorm.weight"] = cast(assemble(nt + "input_layernorm.weight"))
        hf[p + "post_attention_layernorm.weight"] = cast(assemble(nt + "post_attention_layernorm.weight"))
    hf["model.norm.weight"] = cast(assemble("model.final_layer_norm.pp_block.weight"))
    if not cfg.get("tie_word_embeddings"):
        hf["lm_head.weight"] = cast(assemble("model.lm_head.pp_block.weight"))

    # 4. save_file per shard
    groups: list[list[str]] = []
    cur, size = [], 0
    for name, t in hf.items():
        n = t.numel() * t.element_size()
        if cur and size + n > max_shard_size:
            groups.append(cur)
            cur, size = [], 0
        cur.append(name)
        size += n
    if cur:
        groups.append(cur)
    tmp = dst.parent / f"{dst.name}.naive-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weight_map = {}
    for k, names in enumerate(groups):
        fname = "model.safetensors" if len(groups) == 1 else f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: hf[n] for n in names}, str(tmp / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in names})
    if len(groups) > 1:
        total = sum(t.numel() * t.element_size() for t in hf.values())
        (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    out_dt = next(iter(hf.values())).dtype
    hf_cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H, "intermediate_size": I,
              "num_hidden_layers": cfg["num_hidden_layers"], "num_attention_heads": nq, "num_key_value_heads": nkv,
              "vocab_size": cfg["vocab_size"], "rms_norm_eps": cfg["rms_norm_eps"], "rope_theta": cfg["rope_theta"],
              "max_position_embeddings": cfg["max_position_embeddings"], "tie_word_embeddings": False,
              "bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"], "hidden_act": cfg["hidden_act"],
              "dtype": str(out_dt).replace("torch.", "")}
    (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)


def compare_hf(a, b) -> list[str]:
    """Differences between two HF folders' tensors (names, dtypes, shapes, bits); [] if equal."""
    from safetensors import safe_open

    def index(folder: Path) -> dict[str, Path]:
        out = {}
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), "pt") as h:
                out.update({k: f for k in h.keys()})
        return out

    ia, ib = index(Path(a)), index(Path(b))
    problems = [f"only in {a}: {n}" for n in sorted(set(ia) - set(ib))] + [f"only in {b}: {n}" for n in sorted(set(ib) - set(ia))]
    for name in sorted(set(ia) & set(ib)):
        with safe_open(str(ia[name]), "pt") as ha, safe_open(str(ib[name]), "pt") as hb:
            x, y = ha.get_tensor(name), hb.get_tensor(name)
        if x.dtype != y.dtype or x.shape != y.shape:
            problems.append(f"{name}: {x.dtype} {list(x.shape)} vs {y.dtype} {list(y.shape)}")
        elif not bool((x.contiguous().view(-1).view(_int_of(x)) == y.contiguous().view(-1).view(_int_of(y))).all()):
            problems.append(f"{name}: values differ")
    return problems


def _int_of(t):
    import torch

    return {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
