"""An independent, deliberately simple re-implementation of the Nanotron on-disk format for
tests: assemble a parameter from its shard files (torch slicing driven by the metadata
strings), and write a synthetic checkpoint from HF-named tensors. It shares no code with
nanokern, so tests that compare the two can catch a bug in either.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def _slice(text: str) -> slice:
    a, b, c = (None if x == "None" else int(x) for x in text.split(","))
    return slice(a, b, c)


def assemble(folder: Path) -> dict[str, torch.Tensor]:
    """{nanotron param name: full tensor} for every parameter under a step folder's model/."""
    shards: dict[str, list] = {}
    for f in sorted((folder / "model").rglob("*.safetensors")):
        name = ".".join(f.parent.relative_to(folder / "model").parts) + ".weight"
        with safe_open(str(f), "pt") as h:
            t = h.get_tensor("data")
            md = h.metadata() or {}
        shards.setdefault(name, []).append((t, md))
    out = {}
    for name, parts in shards.items():
        md = parts[0][1]
        if not md:
            out[name] = parts[0][0]
            continue
        shape = [int(re.sub(r"np\.int64\((\d+)\)", r"\1", s)) for s in md["unsharded_shape"].strip("()").split(",") if s.strip()]
        full = torch.full(shape, float("nan"), dtype=parts[0][0].dtype)
        for t, m in parts:
            for pair in m["local_global_slices_pairs"].split(";"):
                loc, glo = pair.split("#")
                full[tuple(_slice(s) for s in glo.split("|"))] = t[tuple(_slice(s) for s in loc.split("|"))]
        assert not torch.isnan(full).any() or torch.isnan(torch.cat([p[0].flatten() for p in parts])).any()
        out[name] = full
    return out


def interleave_rows(w: torch.Tensor, d: int) -> torch.Tensor:
    """HF -> Nanotron interleaved layout, per head (nanotron-format.md §4.3)."""
    h = d // 2
    rows, cols = w.shape
    return w.view(rows // d, 2, h, cols).transpose(1, 2).reshape(rows, cols)


def pp_owner(L, H, I, nq, d, V, P):
    costs = [0] + [4 * nq * d * H + 3 * I * H] * L + [0, V * H, 0, 0]
    total = sum(costs)
    owner, k, cum = [], 0, 0
    for c in costs:
        owner.append(k)
        cum += c
        if cum > total * ((k + 1) / P):
            k += 1
    return owner  # [embedding, decoder 0..L-1, final norm, lm_head, ...]


def write_nanotron(root: Path, hf: dict[str, torch.Tensor], cfg: dict, tp: int = 1, pp: int = 1,
                   interleaved: bool = False, bad_naming: bool = False, np_int64: bool = False,
                   write_rope_key: bool = True) -> Path:
    """Write a Nanotron checkpoint (checkpoints_path with latest.txt and step 0) from HF tensors."""
    L, H, I, nq, nkv, V = (cfg[k] for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                             "num_attention_heads", "num_key_value_heads", "vocab_size"))
    d = H // nq
    tied = cfg.get("tie_word_embeddings", False)
    owner = pp_owner(L, H, I, nq, d, V, pp)
    step = root / "0"

    def path(param, p=None, t=None):
        parts = param.split(".")
        if p is None:
            fname = f"model_{parts[-1]}.safetensors"
        elif bad_naming:
            fname = f"model_model_{parts[-1]}.safetensors_pp-rank-{p}-of-{pp}_tp-rank-{t}-of-{tp}.safetensors"
        else:
            fname = f"model_{parts[-1]}_pp-rank-{p}-of-{pp}_tp-rank-{t}-of-{tp}.safetensors"
        f = step / "model" / Path(*parts[:-1]) / fname
        f.parent.mkdir(parents=True, exist_ok=True)
        return f

    def fmt(s):
        return "None,None,None" if s is None else f"{s[0]},{s[1]},None"

    def save_sharded(param, full, p, chunks=None, dim=0):
        shape = list(full.shape)
        sizes = chunks or [shape[dim]]
        for t in range(tp):
            pieces, pairs, loc0, g0 = [], [], 0, 0
            for c in sizes:
                n = c // tp
                idx = [slice(None)] * 2
                idx[dim] = slice(g0 + t * n, g0 + (t + 1) * n)
                pieces.append(full[tuple(idx)])
                lsl = [None, None]
                gsl = [None, None]
                gsl[dim] = (g0 + t * n, g0 + (t + 1) * n)
                if chunks:
                    lsl[dim] = (loc0, loc0 + n)
                pairs.append("|".join(fmt(s) for s in lsl) + "#" + "|".join(fmt(s) for s in gsl))
                loc0 += n
                g0 += c
            data = torch.cat(pieces, dim=dim).contiguous()
            us = list(shape)
            us_txt = f"(np.int64({us[0]}), {us[1]})" if (np_int64 and chunks) else str(tuple(us))
            md = {"version": "1.5", "local_global_slices_pairs": ";".join(pairs), "unsharded_shape": us_txt}
            save_file({"data": data}, str(path(param, p, t)), metadata=md)

    def save_plain(param, w):
        save_file({"data": w.contiguous()}, str(path(param)), metadata={})

    save_sharded("model.token_position_embeddings.pp_block.token_embedding.weight", hf["model.embed_tokens.weight"], owner[0])
    for i in range(L):
        pre, p = f"model.layers.{i}.", owner[1 + i]
        q, k, v = (hf[pre + f"self_attn.{x}_proj.weight"] for x in "qkv")
        if interleaved:
            q, k = interleave_rows(q, d), interleave_rows(k, d)
        nt = f"model.decoder.{i}.pp_block."
        save_sharded(nt + "attn.qkv_proj.weight", torch.cat([q, k, v]), p, chunks=[nq * d, nkv * d, nkv * d])
        save_sharded(nt + "attn.o_proj.weight", hf[pre + "self_attn.o_proj.weight"], p, dim=1)
        save_sharded(nt + "mlp.gate_up_proj.weight", torch.cat([hf[pre + "mlp.gate_proj.weight"], hf[pre + "mlp.up_proj.weight"]]), p, chunks=[I, I])
        save_sharded(nt + "mlp.down_proj.weight", hf[pre + "mlp.down_proj.weight"], p, dim=1)
        save_plain(nt + "input_layernorm.weight", hf[pre + "input_layernorm.weight"])
        save_plain(nt + "post_attention_layernorm.weight", hf[pre + "post_attention_layernorm.weight"])
    save_plain("model.final_layer_norm.pp_block.weight", hf["model.norm.weight"])
    if not tied:
        save_sharded("model.lm_head.pp_block.weight", hf["lm_head.weight"], owner[L + 2])
    mc = {"bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": H, "initializer_range": 0.02,
          "intermediate_size": I, "is_llama_config": True, "max_position_embeddings": 128, "num_attention_heads": nq,
          "num_hidden_layers": L, "num_key_value_heads": nkv, "pad_token_id": None, "pretraining_tp": 1,
          "rms_norm_eps": 1e-5, "rope_scaling": None, "rope_theta": 10000.0, "tie_word_embeddings": tied,
          "use_cache": True, "vocab_size": V}
    if write_rope_key:
        mc["rope_interleaved"] = interleaved
    (step / "model_config.json").write_text(json.dumps(mc))
    (root / "latest.txt").write_text("0")
    return root


def random_hf(cfg: dict, dtype=torch.float32, seed: int = 0, scale: float = 0.5) -> dict[str, torch.Tensor]:
    """HF-named random LLaMA weights (large enough scale that layouts matter)."""
    g = torch.Generator().manual_seed(seed)
    L, H, I, nq, nkv, V = (cfg[k] for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                             "num_attention_heads", "num_key_value_heads", "vocab_size"))
    d = H // nq

    def r(*shape):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    w = {"model.embed_tokens.weight": r(V, H)}
    for i in range(L):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = r(nq * d, H)
        w[p + "self_attn.k_proj.weight"] = r(nkv * d, H)
        w[p + "self_attn.v_proj.weight"] = r(nkv * d, H)
        w[p + "self_attn.o_proj.weight"] = r(H, nq * d)
        w[p + "mlp.gate_proj.weight"] = r(I, H)
        w[p + "mlp.up_proj.weight"] = r(I, H)
        w[p + "mlp.down_proj.weight"] = r(H, I)
        w[p + "input_layernorm.weight"] = (1 + 0.1 * torch.randn(H, generator=g)).to(dtype)
        w[p + "post_attention_layernorm.weight"] = (1 + 0.1 * torch.randn(H, generator=g)).to(dtype)
    w["model.norm.weight"] = (1 + 0.1 * torch.randn(H, generator=g)).to(dtype)
    if not cfg.get("tie_word_embeddings"):
        w["lm_head.weight"] = r(V, H)
    return w


def hf_from_nt(nt: dict[str, torch.Tensor], cfg: dict, vocab: int | None = None) -> dict[str, torch.Tensor]:
    """HF tensors from re-assembled Nanotron params (half-split RoPE: no q/k permutation);
    `vocab` trims the embedding and lm_head rows; no lm_head when the checkpoint has none."""
    H, nq, nkv, L, I = (cfg[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads",
                                         "num_hidden_layers", "intermediate_size"))
    d = H // nq
    out = {"model.embed_tokens.weight": nt["model.token_position_embeddings.pp_block.token_embedding.weight"][:vocab]}
    for i in range(L):
        p, n = f"model.layers.{i}.", f"model.decoder.{i}.pp_block."
        qkv = nt[n + "attn.qkv_proj.weight"]
        out[p + "self_attn.q_proj.weight"] = qkv[: nq * d]
        out[p + "self_attn.k_proj.weight"] = qkv[nq * d : (nq + nkv) * d]
        out[p + "self_attn.v_proj.weight"] = qkv[(nq + nkv) * d :]
        out[p + "self_attn.o_proj.weight"] = nt[n + "attn.o_proj.weight"]
        gu = nt[n + "mlp.gate_up_proj.weight"]
        out[p + "mlp.gate_proj.weight"], out[p + "mlp.up_proj.weight"] = gu[:I], gu[I:]
        out[p + "mlp.down_proj.weight"] = nt[n + "mlp.down_proj.weight"]
        out[p + "input_layernorm.weight"] = nt[n + "input_layernorm.weight"]
        out[p + "post_attention_layernorm.weight"] = nt[n + "post_attention_layernorm.weight"]
    out["model.norm.weight"] = nt["model.final_layer_norm.pp_block.weight"]
    if "model.lm_head.pp_block.weight" in nt:
        out["lm_head.weight"] = nt["model.lm_head.pp_block.weight"][:vocab]
    return out
