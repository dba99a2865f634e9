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


def _load_assembled(step: Path) -> tuple[dict, dict]:
    """(model_config, {nanotron param name: full tensor}): load_file every shard, then torch.cat
    the local pieces in the order of their global slices."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    cfg = json.loads((step / "model_config.json").read_text())
    shards: dict[str, list] = {}
    for f in sorted((step / "model").rglob("*.safetensors")):
        name = ".".join(f.parent.relative_to(step / "model").parts) + ".weight"
        t = load_file(str(f))["data"]
        with safe_open(str(f), "pt") as h:
            md = h.metadata() or {}
        shards.setdefault(name, []).append((t, md))

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

    return cfg, {name: assemble(name) for name in list(shards)}


def _step(src: Path) -> Path:
    return src / (src / "latest.txt").read_text().strip() if (src / "latest.txt").is_file() else src


def naive_convert(src, dst, out_dtype: str = "keep", max_shard_size: int = 5 * 10**9) -> None:
    """Nanotron -> HF the straightforward way: load_file every shard, torch.cat the pieces along
    their global slices, split qkv / gate_up, cast, save_file per shard (greedy 5 GB split in
    state_dict order, like save_pretrained), index and config.json."""
    import torch
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    step = _step(src)
    cfg = json.loads((step / "model_config.json").read_text())
    if cfg.get("rope_interleaved", True):
        raise ValueError("naive baseline: interleaved RoPE checkpoints are not supported")
    H, I, nq, nkv = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = H // nq

    # 1-2. load every shard, assemble full tensors
    _, full = _load_assembled(step)

    def assemble(name: str) -> torch.Tensor:
        return full.pop(name)

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


_TORCH_DT = {"keep": None, "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _write_nanotron(dst: Path, full: dict, cfg: dict, tp: int, pp: int, out_dtype: str) -> None:
    """save_file every Nanotron shard of `full` ({nanotron param name: full tensor}) at TP x PP:
    each shard sliced out of the full tensor along its global slices, cast, made contiguous.
    The file names, metadata strings and PP split are Nanotron's (nanokern.bench.synthetic)."""
    import torch
    from safetensors.torch import save_file

    from nanokern.bench.synthetic import Shape, shard_files

    shape = Shape(cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"],
                  cfg["num_key_value_heads"], cfg["vocab_size"])
    dt = None if _TORCH_DT[out_dtype] is None else getattr(torch, _TORCH_DT[out_dtype])
    tmp = dst.parent / f"{dst.name}.naive-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    step = tmp / "0"
    for sf in shard_files(shape, tp, pp):
        parts = sf.path.split("/")
        name = ".".join(parts[1:-1]) + ".weight"
        t = full[name]
        if sf.metadata:
            local = torch.empty(sf.shape, dtype=t.dtype)
            for pair in sf.metadata["local_global_slices_pairs"].split(";"):
                loc, glo = pair.split("#")
                local[tuple(_parse_slice(x) for x in loc.split("|"))] = t[tuple(_parse_slice(x) for x in glo.split("|"))]
        else:
            local = t
        local = local.to(dt) if dt is not None and local.dtype != dt else local.contiguous()
        (step / sf.path).parent.mkdir(parents=True, exist_ok=True)
        save_file({"data": local}, str(step / sf.path), metadata=sf.metadata)
    (step / "model_config.json").write_text(json.dumps(cfg))
    (tmp / "latest.txt").write_text("0")
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)


def naive_import(src, dst, out_dtype: str = "keep", tp: int = 1, pp: int = 1) -> None:
    """HF -> Nanotron the straightforward way: load_file every HF shard, torch.cat q/k/v and
    gate/up, slice every TP shard, cast, save_file per Nanotron file."""
    import torch
    from safetensors.torch import load_file

    src, dst = Path(src), Path(dst)
    hf: dict = {}
    for f in sorted(src.glob("*.safetensors")):
        hf.update(load_file(str(f)))
    c = json.loads((src / "config.json").read_text())
    nt: dict = {"model.token_position_embeddings.pp_block.token_embedding.weight": hf.pop("model.embed_tokens.weight")}
    for i in range(c["num_hidden_layers"]):
        p, n = f"model.layers.{i}.", f"model.decoder.{i}.pp_block."
        nt[n + "attn.qkv_proj.weight"] = torch.cat([hf.pop(p + f"self_attn.{x}_proj.weight") for x in "qkv"])
        nt[n + "attn.o_proj.weight"] = hf.pop(p + "self_attn.o_proj.weight")
        nt[n + "mlp.gate_up_proj.weight"] = torch.cat([hf.pop(p + "mlp.gate_proj.weight"), hf.pop(p + "mlp.up_proj.weight")])
        nt[n + "mlp.down_proj.weight"] = hf.pop(p + "mlp.down_proj.weight")
        nt[n + "input_layernorm.weight"] = hf.pop(p + "input_layernorm.weight")
        nt[n + "post_attention_layernorm.weight"] = hf.pop(p + "post_attention_layernorm.weight")
    nt["model.final_layer_norm.pp_block.weight"] = hf.pop("model.norm.weight")
    nt["model.lm_head.pp_block.weight"] = hf.pop("lm_head.weight")
    keys = ("bos_token_id", "eos_token_id", "hidden_act", "hidden_size", "intermediate_size", "max_position_embeddings",
            "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "rms_norm_eps", "tie_word_embeddings",
            "vocab_size")
    cfg = {k: c.get(k) for k in keys} | {"rope_theta": (c.get("rope_parameters") or {}).get("rope_theta", c.get("rope_theta")),
                                         "rope_interleaved": False, "is_llama_config": True}
    _write_nanotron(dst, nt, cfg, tp, pp, out_dtype)


def naive_reshard(src, dst, out_dtype: str = "keep", tp: int = 1, pp: int = 1) -> None:
    """Nanotron -> Nanotron at another TP x PP: load and assemble every parameter (as
    naive_convert does), then slice and save_file every new shard."""
    src, dst = Path(src), Path(dst)
    cfg, full = _load_assembled(_step(src))
    _write_nanotron(dst, full, cfg, tp, pp, out_dtype)


def compare_nanotron(a, b) -> list[str]:
    """Differences between the model/ shards of two Nanotron checkpoints (file names, dtypes,
    shapes, bits, metadata); [] if equal."""
    from safetensors import safe_open

    def files(root: Path) -> dict[str, Path]:
        step = _step(root)
        return {str(p.relative_to(step)): p for p in sorted((step / "model").rglob("*.safetensors"))}

    fa, fb = files(Path(a)), files(Path(b))
    problems = [f"only in {a}: {n}" for n in sorted(set(fa) - set(fb))] + [f"only in {b}: {n}" for n in sorted(set(fb) - set(fa))]
    for rel in sorted(set(fa) & set(fb)):
        with safe_open(str(fa[rel]), "pt") as ha, safe_open(str(fb[rel]), "pt") as hb:
            x, y = ha.get_tensor("data"), hb.get_tensor("data")
            ma, mb = ha.metadata() or {}, hb.metadata() or {}
        if x.dtype != y.dtype or x.shape != y.shape:
            problems.append(f"{rel}: {x.dtype} {list(x.shape)} vs {y.dtype} {list(y.shape)}")
        elif not bool((x.contiguous().view(-1).view(_int_of(x)) == y.contiguous().view(-1).view(_int_of(y))).all()):
            problems.append(f"{rel}: values differ")
        if _canonical_md(ma) != _canonical_md(mb):
            problems.append(f"{rel}: metadata {ma} vs {mb}")
    return problems


def _canonical_md(md: dict) -> dict:
    if not md:
        return {}
    shape = md["unsharded_shape"].replace("np.int64(", "").replace(")", "").strip("(").split(",")
    return {"keys": sorted(md), "version": md["version"], "shape": [int(x) for x in shape if x.strip()],
            "pairs": set(md["local_global_slices_pairs"].split(";"))}


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
