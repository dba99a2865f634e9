"""run_parity: the native-layout forward against transformers, layer by layer; and
reproduce_logits: the native forward against Nanotron's own logits.

Verdict rules
- fp32: logits max |diff| <= 1e-4 * max(1, max|ref logits|) and top-1 agreement 100% (counted
  where the reference's top-1 margin > 1e-3 * max|ref logits|); every decoder layer and the
  final norm within relative L2 <= 1e-5 (fp32 rounding is ~1e-7; a layout error is >= 1e-3).
- bf16: the reference is transformers in fp32 on the same weights. Every error metric of the
  native bf16 forward (per layer: max/mean |diff|, relative L2, 1-cos; logits also KL mean/max
  and the top-1 mismatch rate) must be <= 2 x the same metric of transformers itself run in
  bf16 (the self-calibrated noise floor) + a small absolute epsilon. Top-1 is counted where the
  reference margin exceeds both 1e-3 * scale and twice the allowed logits max |diff|.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nanokern.errors import NanokernError
from nanokern.io.dtypes import of_torch
from nanokern.formats.nanotron import NanotronCheckpoint, read_checkpoint
from nanokern.parity import metrics as M
from nanokern.parity.native import NativeModel, torch_dtype
from nanokern.parity.report import ParityReport, Row, display_name

FP32_LOGITS_ATOL = 1e-4
FP32_LAYER_REL_L2 = 1e-5
LOW_FACTOR = 2.0
TOP1_MARGIN_REL = 1e-3
# absolute epsilons that keep a zero noise floor from demanding exactness (abs ones x scale)
EPS = {"max_abs": 1e-6, "mean_abs": 1e-7, "rel_l2": 1e-6, "one_minus_cos": 1e-9, "kl": 1e-9, "kl_max": 1e-9, "top1_mismatch": 0.0}


def make_tokens(vocab: int, batch: int = 2, seq_len: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq_len), generator=g)


def _dtype_name(dtype) -> str:
    return of_torch(torch_dtype(dtype)).short


def _moe_layers(cfg: dict) -> list[int]:
    """Qwen2Moe's sparse layers: every decoder_sparse_step-th layer not in mlp_only_layers."""
    step = cfg.get("decoder_sparse_step") or 1
    only = set(cfg.get("mlp_only_layers") or [])
    return [i for i in range(cfg.get("num_hidden_layers", 0)) if i not in only and (i + 1) % step == 0]


def _check_shapes(ck: NanotronCheckpoint, cfg: dict, hf_dir) -> None:
    """The HF config must describe tensors of the checkpoint's shapes (the family's own keys too:
    Qwen2Moe's experts); semantics (bias values, RoPE layers, window, routing) are what the
    forward comparison itself checks."""
    sp = ck.spec
    want = {
        "hidden_size": sp.hidden_size, "intermediate_size": sp.intermediate_size, "num_hidden_layers": sp.num_hidden_layers,
        "num_attention_heads": sp.num_attention_heads, "num_key_value_heads": sp.num_key_value_heads,
    }
    if cfg.get("head_dim") is not None:
        want["head_dim"] = sp.head_dim
    moe_keys = ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size")
    if sp.moe is not None:
        m = sp.moe
        want.update({"num_experts": m.num_experts, "num_experts_per_tok": m.top_k,
                     "moe_intermediate_size": m.moe_intermediate_size})
        if m.enable_shared_expert:
            want["shared_expert_intermediate_size"] = m.shared_expert_intermediate_size
    bad = [f"{k} {cfg.get(k)} (checkpoint {v})" for k, v in want.items() if cfg.get(k, v) != v]
    if sp.moe is not None:
        bad += [f"{k} missing (checkpoint has MoE layers {sp.moe.layers})" for k in moe_keys[:3] if k not in cfg]
        if not bad and _moe_layers(cfg) != sorted(sp.moe.layers):
            bad.append(f"MoE layers {_moe_layers(cfg)} (checkpoint {sorted(sp.moe.layers)})")
    elif cfg.get("num_experts"):
        bad.append(f"num_experts {cfg['num_experts']} (checkpoint has no MoE layers)")
    if bad:
        raise NanokernError("HF model does not match the checkpoint: " + ", ".join(bad), Path(hf_dir) / "config.json")
    if cfg.get("vocab_size", sp.vocab_size) > sp.vocab_size:
        raise NanokernError(f"HF vocab_size {cfg['vocab_size']} exceeds the checkpoint's {sp.vocab_size}", Path(hf_dir) / "config.json")


def run_parity(
    ckpt,
    hf_dir=None,
    dtype: str = "fp32",
    backend: str = "auto",
    tokens: torch.Tensor | None = None,
    seed: int = 0,
    seq_len: int = 32,
    batch: int = 2,
    device: str | None = None,
    attn_implementation: str = "eager",
    numerics: str = "hf",
) -> ParityReport:
    """Native Nanotron-layout forward vs the HF folder's transformers model (any family) on the same tokens.

    ckpt: a Nanotron checkpoint (path or NanotronCheckpoint). hf_dir: the HF folder to compare
    with; None converts the checkpoint into a temporary folder first (nanokern.convert, dtype
    keep). dtype: "fp32" or "bf16" (see the module docstring for the rules).
    """
    torch_dtype(dtype)  # validate before any work
    if hf_dir is None:
        from nanokern.convert import convert

        ck = ckpt if isinstance(ckpt, NanotronCheckpoint) else read_checkpoint(ckpt)
        with tempfile.TemporaryDirectory(prefix="nanokern-parity-") as tmp:
            t0 = time.perf_counter()
            convert(ck.step_dir, Path(tmp) / "hf", to="hf", dtype="keep", force=True, progress=False)
            t_conv = time.perf_counter() - t0
            rep = run_parity(ck, Path(tmp) / "hf", dtype, backend, tokens, seed, seq_len, batch, device, attn_implementation, numerics)
        rep.hf_dir = None
        rep.timings["convert_s"] = round(t_conv, 3)
        rep.notes.insert(0, "HF model: a temporary export by nanokern.convert (dtype keep)")
        return rep

    from nanokern.parity import fp8
    from nanokern.parity.reference import hf_forward, load_hf, read_hf_config, tokenizer_vocab_size

    if fp8.is_fp8(hf_dir):  # an FP8 folder: its weights within e4m3's bound, the forward within its noise floor
        ck = ckpt if isinstance(ckpt, NanotronCheckpoint) else read_checkpoint(ckpt)
        toks = (batch, seq_len, seed) if tokens is None else torch.as_tensor(tokens, dtype=torch.long).reshape(-1, len(tokens[-1]) if torch.as_tensor(tokens).dim() > 1 else len(tokens))
        rep = fp8.run_fp8_parity(ck, hf_dir, dtype, backend, toks, device, attn_implementation, numerics)
        rep.seed = seed if tokens is None else None
        return rep

    timings = {}
    t0 = time.perf_counter()
    ck = ckpt if isinstance(ckpt, NanotronCheckpoint) else read_checkpoint(ckpt)
    cfg = read_hf_config(hf_dir)
    _check_shapes(ck, cfg, hf_dir)
    low = torch_dtype(dtype) != torch.float32
    native = NativeModel(ck, dtype, backend, device, numerics)
    timings["load_native_s"] = time.perf_counter() - t0

    vocab = min(ck.spec.vocab_size, int(cfg.get("vocab_size", ck.spec.vocab_size)))
    tv = tokenizer_vocab_size(hf_dir)
    if tv:
        vocab_tokens = min(vocab, tv)
    else:
        vocab_tokens = vocab
    if tokens is None:
        tokens = make_tokens(vocab_tokens, batch, seq_len, seed)
    else:
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        if tokens.dim() == 1:
            tokens = tokens[None]
        if int(tokens.min()) < 0 or int(tokens.max()) >= vocab:
            raise ValueError(f"token ids must be in [0, {vocab})")
        seed = None

    t0 = time.perf_counter()
    out = native(tokens)
    timings["native_forward_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    dev = native.device
    ref_model = load_hf(hf_dir, torch.float32, dev, attn_implementation)
    ref = hf_forward(ref_model, tokens)
    hf_class = type(ref_model).__name__
    del ref_model
    floor = None
    if low:
        low_model = load_hf(hf_dir, torch_dtype(dtype), dev, attn_implementation)
        floor = hf_forward(low_model, tokens)
        del low_model
    timings["hf_s"] = time.perf_counter() - t0

    rows: list[Row] = []
    pairs = [(f"layer {i}", ref.layers[i], out.layers[i], floor.layers[i] if floor else None) for i in range(len(ref.layers))]
    pairs.append(("final_norm", ref.final_norm, out.final_norm, floor.final_norm if floor else None))
    for name, r, t, f in pairs:
        m = M.compare(r, t)
        row = Row(name, m)
        if low:
            row.floor = M.compare(r, f)
            row.limits = {k: LOW_FACTOR * row.floor[k] + EPS[k] * (m["scale"] if k.endswith("_abs") else 1.0) for k in M.ERROR_METRICS}
        else:
            row.limits = {"rel_l2": FP32_LAYER_REL_L2}
        row.check()
        rows.append(row)

    ref_logits = ref.logits[..., :vocab]
    test_logits = out.logits[..., :vocab]
    scale = float(ref_logits.abs().max())
    if low:
        fl_logits = floor.logits[..., :vocab]
        fl0 = M.compare(ref_logits, fl_logits)
        max_lim = LOW_FACTOR * fl0["max_abs"] + EPS["max_abs"] * scale
        margin = max(TOP1_MARGIN_REL * scale, 2 * max_lim)
        fl = M.compare_logits(ref_logits, fl_logits, margin)
        m = M.compare_logits(ref_logits, test_logits, margin)
        row = Row("logits", m, fl)
        row.limits = {k: LOW_FACTOR * fl[k] + EPS[k] * (scale if k.endswith("_abs") else 1.0) for k in M.LOGIT_ERROR_METRICS}
        rule = (f"bf16 native vs transformers fp32: every error metric <= {LOW_FACTOR:g} x transformers bf16's own "
                f"error (noise floor) + eps")
    else:
        margin = TOP1_MARGIN_REL * scale
        m = M.compare_logits(ref_logits, test_logits, margin)
        row = Row("logits", m)
        row.limits = {"max_abs": FP32_LOGITS_ATOL * max(1.0, scale), "top1_mismatch": 0.0}
        rule = (f"fp32: logits max|diff| <= {FP32_LOGITS_ATOL:g} x max(1, max|logits|), top-1 100%; "
                f"layers rel L2 <= {FP32_LAYER_REL_L2:g}")
    row.check()
    rows.append(row)

    notes = list(native.notes) + list(ck.warnings)
    if vocab < ck.spec.vocab_size:
        notes.append(f"HF vocab {vocab} < checkpoint vocab {ck.spec.vocab_size}: logits compared on the first {vocab} ids")
    if m["top1_counted"] == 0:
        notes.append("no position has a clear top-1 margin: top-1 agreement is vacuous")
    rep = ParityReport(
        ckpt=os.fspath(ck.step_dir), hf_dir=os.fspath(hf_dir), dtype=_dtype_name(dtype), backend=native.backend,
        device=str(dev), numerics=numerics, attn_implementation=attn_implementation, tokens_shape=list(tokens.shape),
        seed=seed, vocab_compared=vocab, rows=rows, rule=rule, tp=ck.tp, pp=ck.pp, rope_interleaved=ck.rope_interleaved,
        notes=notes, timings={k: round(v, 3) for k, v in timings.items()}, hf_class=hf_class,
    )
    if low:
        rep.direct = M.compare(floor.logits[..., :vocab], test_logits)
    return rep


# ---------------------------------------------------------------------------------------------


@dataclass
class LogitsReport:
    ckpt: str
    logits_file: str
    dtype: str
    backend: str
    numerics: str
    max_abs: float
    mean_abs: float
    argmax_agree: float
    atol: float
    min_argmax: float

    @property
    def passed(self) -> bool:
        return self.max_abs <= self.atol and self.argmax_agree >= self.min_argmax

    def line(self) -> str:
        return (f"{display_name(self.ckpt)}: {self.dtype}/{self.numerics} max|diff| {self.max_abs:.3e} "
                f"(<= {self.atol:g}) mean {self.mean_abs:.3e} argmax {100 * self.argmax_agree:.1f}% "
                f"(>= {100 * self.min_argmax:g}%) -> {'PASS' if self.passed else 'FAIL'}")


def reproduce_logits(ckpt, logits_file, backend: str = "auto", dtype: str | None = None, numerics: str = "nanotron",
                     device: str | None = None, margin: float | None = None) -> LogitsReport:
    """The native forward on the stored input_ids against Nanotron's own logits.

    dtype None = the checkpoint's own dtype (Nanotron computes in its parameter dtype). Nanotron's
    bf16 forward is reproduced by numerics "nanotron": bf16 matmuls, its fused RMSNorms and RoPE
    computed in fp32 and rounded once (Qwen2Config: input_layernorm is the plain RMSNorm, HF's
    roundings), attention in fp32 rounded once, the TP all-reduce summed in bf16 in rank order:
    on the bf16 fixtures this is bit-exact on CPU with oneDNN's AVX2 bf16 GEMMs (other CPU GEMM
    paths round differently: up to ~2e-2 apart). Limits: fp32 max|diff| <= 1e-4 and argmax 100%;
    bf16 max|diff| <= 0.03 and argmax >= 95%. margin: count argmax agreement only where Nanotron's
    top-1 logit beats its top-2 by more than this (closer than the noise cannot be judged).
    """
    from safetensors.torch import load_file

    ck = ckpt if isinstance(ckpt, NanotronCheckpoint) else read_checkpoint(ckpt)
    try:
        data = load_file(os.fspath(logits_file))
        ids, want = data["input_ids"], data["logits"]
    except FileNotFoundError:
        raise NanokernError("logits file does not exist", logits_file) from None
    except KeyError as e:
        raise NanokernError(f"logits file lacks tensor {e}", logits_file) from None
    if dtype is None:
        dt = next(iter(ck.params.values())).dtype.torch
        dtype = "bf16" if dt in (torch.bfloat16, torch.float16) else "fp32"
    native = NativeModel(ck, dtype, backend, device, numerics)
    got = native(ids).logits.float().cpu()
    V = min(got.shape[-1], want.shape[-1])
    got, want = got[..., :V], want[..., :V].float()
    diff = (got - want).abs()
    same = got.argmax(-1) == want.argmax(-1)
    if margin is not None:
        same = same.reshape(-1)[M.top2_margin(want) > margin]
    agree = float(same.float().mean()) if same.numel() else 1.0
    fp32 = torch_dtype(dtype) == torch.float32 and next(iter(ck.params.values())).dtype.torch == torch.float32
    return LogitsReport(os.fspath(ck.step_dir), os.fspath(logits_file), _dtype_name(dtype), native.backend, numerics,
                        float(diff.max()), float(diff.mean()), agree, 1e-4 if fp32 else 0.03, 1.0 if fp32 else 0.95)
