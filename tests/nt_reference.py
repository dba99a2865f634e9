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


_RANKS = re.compile(r"_pp-rank-\d+-of-\d+_tp-rank-\d+-of-\d+(_exp-rank-\d+-of-\d+)?\.safetensors$")


def _stem(file_name: str) -> str:
    """Last component of the parameter name: `model_weight_pp-rank-..` -> weight,
    `model_bias_..` -> bias, `model_merged_gate_up_proj.safetensors` -> merged_gate_up_proj
    (the 2024 `model_model_weight.safetensors_pp-..` naming gives weight too)."""
    stem = _RANKS.sub("", file_name).removesuffix(".safetensors").removesuffix(".safetensors")
    stem = stem.removeprefix("model_")
    return stem.removeprefix("model_") if stem.startswith("model_weight") else stem


def assemble(folder: Path) -> dict[str, torch.Tensor]:
    """{nanotron param name: full tensor} for every parameter under a step folder's model/."""
    shards: dict[str, list] = {}
    for f in sorted((folder / "model").rglob("*.safetensors")):
        name = ".".join(f.parent.relative_to(folder / "model").parts + (_stem(f.name),))
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


# ---------------------------------------------------------------------------------------------
# Qwen2Config checkpoints (nanotron-format.md §11): Nanotron -> HF mapping per family, the HF
# config that reproduces Nanotron's forward, and a hand-mapped transformers forward.

HF_CONFIG_CLASS = {"LlamaForCausalLM": "LlamaConfig", "Qwen2ForCausalLM": "Qwen2Config",
                   "SmolLM3ForCausalLM": "SmolLM3Config", "Qwen2MoeForCausalLM": "Qwen2MoeConfig"}


def moe_layers(mc: dict) -> list[int]:
    """Layers that are MoE in a Qwen2Config (`[-1]` means all, §11.6); [] without moe_config."""
    moe = mc.get("moe_config")
    if not moe:
        return []
    layers = moe.get("layers", [-1])
    return list(range(mc["num_hidden_layers"])) if layers == [-1] else sorted(layers)


def hf_arch_for(mc: dict) -> str:
    """The transformers class §11.7 pairs with a Nanotron model config."""
    if mc.get("moe_config"):
        return "Qwen2MoeForCausalLM"
    if mc.get("no_rope_layer"):
        return "SmolLM3ForCausalLM"
    if mc.get("attention_bias") or mc.get("sliding_window_size"):
        return "Qwen2ForCausalLM"
    return "LlamaForCausalLM"


def hf_config_kwargs(mc: dict, arch: str) -> dict:
    """Keyword arguments for the transformers config class of `arch` that make it compute what
    Nanotron computes for `mc` (padded vocab kept)."""
    L = mc["num_hidden_layers"]
    kw = dict(vocab_size=mc["vocab_size"], hidden_size=mc["hidden_size"], intermediate_size=mc["intermediate_size"],
              num_hidden_layers=L, num_attention_heads=mc["num_attention_heads"],
              num_key_value_heads=mc["num_key_value_heads"], rms_norm_eps=mc["rms_norm_eps"],
              hidden_act=mc["hidden_act"], max_position_embeddings=mc["max_position_embeddings"],
              tie_word_embeddings=mc["tie_word_embeddings"], bos_token_id=mc["bos_token_id"],
              eos_token_id=mc["eos_token_id"], pad_token_id=mc["pad_token_id"],
              rope_parameters={"rope_type": "default", "rope_theta": float(mc.get("rope_theta", 10000.0))})
    w = mc.get("sliding_window_size")
    if arch == "LlamaForCausalLM":
        kw.update(attention_bias=False, mlp_bias=False)
    elif arch == "Qwen2ForCausalLM":
        if w:  # HF windows the layers i >= max_window_layers; Nanotron all of them, w keys each
            kw.update(use_sliding_window=True, sliding_window=w, max_window_layers=0,
                      layer_types=["sliding_attention"] * L)
        else:
            kw.update(use_sliding_window=False, layer_types=["full_attention"] * L)
    elif arch == "SmolLM3ForCausalLM":
        n = mc["no_rope_layer"]
        rope = [int((i + 1) % n != 0) for i in range(L)]
        kw.update(no_rope_layer_interval=n, no_rope_layers=rope, attention_bias=bool(mc.get("attention_bias")),
                  use_sliding_window=bool(w), sliding_window=w,
                  layer_types=["sliding_attention" if (w and r) else "full_attention" for r in rope])
    elif arch == "Qwen2MoeForCausalLM":
        moe, layers = mc["moe_config"], moe_layers(mc)
        assert moe.get("enable_shared_expert", True), "reference covers the shared-expert case only"
        kw.update(num_experts=moe["num_experts"], num_experts_per_tok=moe["top_k"], norm_topk_prob=False,
                  moe_intermediate_size=moe["moe_intermediate_size"],
                  shared_expert_intermediate_size=moe["shared_expert_intermediate_size"], decoder_sparse_step=1,
                  mlp_only_layers=[i for i in range(L) if i not in layers], qkv_bias=bool(mc.get("attention_bias")),
                  use_sliding_window=False)
    return kw


def hf_from_nt_qwen2(nt: dict[str, torch.Tensor], mc: dict, arch: str | None = None,
                     vocab: int | None = None) -> dict[str, torch.Tensor]:
    """HF tensors, named as `save_pretrained` writes them, from re-assembled Qwen2Config params.
    `arch` defaults to hf_arch_for(mc); Qwen2ForCausalLM on a bias-free checkpoint gets zero
    q/k/v biases (HF Qwen2 attention always has them)."""
    arch = arch or hf_arch_for(mc)
    H, nq, nkv, L, I = (mc[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads",
                                        "num_hidden_layers", "intermediate_size"))
    d = H // nq
    sizes = [nq * d, nkv * d, nkv * d]
    moe = set(moe_layers(mc))
    out = {"model.embed_tokens.weight": nt["model.token_position_embeddings.pp_block.token_embedding.weight"][:vocab]}
    for i in range(L):
        p, n = f"model.layers.{i}.", f"model.decoder.{i}.pp_block."
        for x, t in zip("qkv", nt[n + "attn.qkv_proj.weight"].split(sizes)):
            out[p + f"self_attn.{x}_proj.weight"] = t
        bias = nt.get(n + "attn.qkv_proj.bias")
        if bias is None and arch == "Qwen2ForCausalLM":
            bias = torch.zeros(sum(sizes), dtype=out[p + "self_attn.q_proj.weight"].dtype)
        if bias is not None:
            for x, t in zip("qkv", bias.split(sizes)):
                out[p + f"self_attn.{x}_proj.bias"] = t
        out[p + "self_attn.o_proj.weight"] = nt[n + "attn.o_proj.weight"]
        if i in moe:
            out.update(_hf_moe_mlp(nt, n + "mlp.", p + "mlp.", mc["moe_config"]))
        else:
            out.update(_hf_dense_mlp(nt, n + "mlp.", p + "mlp.", I))
        out[p + "input_layernorm.weight"] = nt[n + "input_layernorm.weight"]
        out[p + "post_attention_layernorm.weight"] = nt[n + "post_attention_layernorm.weight"]
    out["model.norm.weight"] = nt["model.final_layer_norm.pp_block.weight"]
    if "model.lm_head.pp_block.weight" in nt:
        out["lm_head.weight"] = nt["model.lm_head.pp_block.weight"][:vocab]
    return out


def _hf_dense_mlp(nt, n, p, inter):
    gate, up = nt[n + "gate_up_proj.weight"].split([inter, inter])
    return {p + "gate_proj.weight": gate, p + "up_proj.weight": up, p + "down_proj.weight": nt[n + "down_proj.weight"]}


def _hf_moe_mlp(nt, n, p, moe):
    """Router -> gate; input-major experts [E, hidden, 2I] / [E, I, hidden] -> per-expert
    nn.Linear weights (transposed, gate = first I columns); shared expert and its gate."""
    inter = moe["moe_intermediate_size"]
    out = {p + "gate.weight": nt[n + "router.weight"]}
    gate_up, down = nt[n + "experts.merged_gate_up_proj"], nt[n + "experts.merged_down_proj"]
    for e in range(moe["num_experts"]):
        out[p + f"experts.{e}.gate_proj.weight"] = gate_up[e, :, :inter].T.contiguous()
        out[p + f"experts.{e}.up_proj.weight"] = gate_up[e, :, inter:].T.contiguous()
        out[p + f"experts.{e}.down_proj.weight"] = down[e].T.contiguous()
    out.update(_hf_dense_mlp(nt, n + "shared_expert.", p + "shared_expert.", moe["shared_expert_intermediate_size"]))
    out[p + "shared_expert_gate.weight"] = nt[n + "shared_expert_gate.weight"]
    return out


_EXPERT = re.compile(r"^(.*\.experts)\.(\d+)\.(gate|up|down)_proj\.weight$")


def hf_module_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The on-disk (per-expert) names -> the in-memory state_dict of transformers 5.24, whose MoE
    experts are fused: gate_up_proj [E, 2I, hidden] (gate rows first), down_proj [E, hidden, I]."""
    out, experts = {}, {}
    for k, v in sd.items():
        m = _EXPERT.match(k)
        if m:
            experts.setdefault(m[1], {}).setdefault(int(m[2]), {})[m[3]] = v
        else:
            out[k] = v
    for prefix, per in experts.items():
        ids = sorted(per)
        assert ids == list(range(len(ids))), prefix
        out[prefix + ".gate_up_proj"] = torch.stack([torch.cat([per[e]["gate"], per[e]["up"]]) for e in ids])
        out[prefix + ".down_proj"] = torch.stack([per[e]["down"] for e in ids])
    return out


def hf_model(arch: str, kwargs: dict, sd: dict[str, torch.Tensor], dtype=torch.float32):
    """A transformers model of class `arch` built in code, holding `sd` (strict load)."""
    import transformers

    cfg = getattr(transformers, HF_CONFIG_CLASS[arch])(**kwargs)
    cfg._attn_implementation = "eager"
    model = getattr(transformers, arch)(cfg).to(dtype)
    state = {k: v.to(dtype) for k, v in hf_module_state(sd).items()}
    if kwargs.get("tie_word_embeddings") and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True)
    return model.eval()


def forward_logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids).logits.float()


# ---------------------------------------------------------------------------------------------
# Comparing two Nanotron checkpoints (files under model/, tensors, metadata as values).

def step_dir(root: Path) -> Path:
    return root / (root / "latest.txt").read_text().strip()


def model_files(root: Path) -> dict[str, Path]:
    """{path relative to model/: file} of a checkpoints_path (follows latest.txt)."""
    model = step_dir(root) / "model"
    return {str(p.relative_to(model)): p for p in sorted(model.rglob("*.safetensors"))}


def read_shard(path: Path):
    with safe_open(str(path), "pt") as f:
        assert list(f.keys()) == ["data"], path
        return f.get_tensor("data"), f.metadata() or {}


def _slice_values(text: str) -> tuple:
    sl = _slice(text)
    return (sl.start, sl.stop, sl.step)


def metadata_values(md: dict) -> dict:
    """Shard metadata as values: slice pairs parsed, `unsharded_shape` as ints (np.int64(N) allowed)."""
    if not md:
        return {}
    shape = tuple(int(re.sub(r"np\.int64\((\d+)\)", r"\1", s).strip())
                  for s in md["unsharded_shape"].strip().removeprefix("(").removesuffix(")").split(",") if s.strip())
    pairs = sorted(tuple(tuple(_slice_values(s) for s in side.split("|")) for side in pair.split("#"))
                   for pair in md["local_global_slices_pairs"].split(";"))
    return {"keys": sorted(md), "version": md["version"], "unsharded_shape": shape, "pairs": pairs}


def assert_same_weights(got: Path, want: Path):
    """Same files under model/, bit-identical tensors of the same dtype and shape, same metadata values."""
    g, w = model_files(got), model_files(want)
    assert sorted(g) == sorted(w), (sorted(set(g) ^ set(w)))
    for rel in w:
        (tg, mg), (tw, mw) = read_shard(g[rel]), read_shard(w[rel])
        assert tg.dtype == tw.dtype and tg.shape == tw.shape, (rel, tg.dtype, tw.dtype, tg.shape, tw.shape)
        assert torch.equal(tg.contiguous().view(torch.uint8), tw.contiguous().view(torch.uint8)), rel
        assert metadata_values(mg) == metadata_values(mw), (rel, mg, mw)
