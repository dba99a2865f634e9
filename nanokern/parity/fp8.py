"""`parity CKPT --hf DIR` where DIR is an FP8 folder (its 128 x 128-block e4m3 weights: a
`--dtype fp8` export of CKPT). The folder is not the checkpoint's weights but their rounding to
e4m3, so the check is in two parts, each stated in the report:

1. weights, a bound derived from e4m3's precision: every dequantized element of every FP8 weight
   is within e4m3's rounding bound of the checkpoint's value, |d - x| <= (2^-4 + 2^-21)|x| +
   (2^-10 + 2^-30) scale_inv (ops/fp8_dequant.rounding_bound, derived there: 3 mantissa bits,
   2^-4 relative in e4m3's normal range, half its subnormal step times the block's scale below),
   or re-quantizing the checkpoint's tensor gives the stored bytes exactly (verify_fp8.compare).
2. forward: the native forward on the checkpoint against transformers fp32 on the dequantized
   weights (transformers' own dequantization; nanokern's where a weight has partial edge blocks,
   which transformers' CPU path does not cut as the scales were made). Their distance is the
   quantization's, so each error metric must be within 2x the same metric of transformers on the
   checkpoint's own weights (a temporary `--dtype keep` export) against the dequantized ones (the
   e4m3 noise floor) + eps: a layout error (q/k rows, a TP shard) is far above it.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from nanokern.errors import NanokernError
from nanokern.parity import metrics as M
from nanokern.parity.report import ParityReport, Row

LOW_FACTOR = 2.0


def is_fp8(hf_dir) -> bool:
    from nanokern import verify_fp8

    return hf_dir is not None and verify_fp8.is_fp8_folder(hf_dir)


def check_weights(step_dir, hf_dir) -> tuple[list[str], dict[str, list[str]], bool]:
    """Part 1: (problem lines, names by check ('exact' / 'bound'), any partial edge block)."""
    from nanokern import verify_fp8
    from nanokern.convert import load_source
    from nanokern.verify import materialize

    ck = load_source(step_dir)
    _, pairs = verify_fp8.read_fp8(hf_dir)
    problems, kinds, maps_ck, maps_q = [], {}, {}, {}
    partial = any(r % w.block[0] or c % w.block[1] for w in pairs.values() for r, c in [w.weight.shape])
    for name, w in pairs.items():
        t = ck.tensors.get(name)
        if t is None:
            problems.append(f"{name}: the checkpoint has no such tensor")
            continue
        kind, problem = verify_fp8.compare(name, w, materialize(t, maps_ck), maps_q)
        kinds.setdefault(kind, []).append(name)
        problems += [problem] if problem else []
    return problems, kinds, partial


def _reference(hf_dir, tmp: Path, partial: bool, device, attn):
    """transformers fp32 on the dequantized weights."""
    from transformers import FineGrainedFP8Config

    from nanokern.parity.reference import load_hf

    if partial:  # nanokern's dequantization, into an unquantized float32 folder
        from nanokern.convert import convert

        convert(hf_dir, tmp / "dequantized", to="hf", dtype="fp32", force=True, progress=False)
        return load_hf(tmp / "dequantized", torch.float32, device, attn), "nanokern's (partial edge blocks)"
    from transformers import AutoModelForCausalLM

    from nanokern.parity.reference import _quiet_transformers

    qc = FineGrainedFP8Config(dequantize=True)
    with _quiet_transformers():
        try:
            model = AutoModelForCausalLM.from_pretrained(os.fspath(hf_dir), dtype=torch.float32, attn_implementation=attn,
                                                         quantization_config=qc)
        except (OSError, ValueError, ImportError) as e:
            raise NanokernError(f"transformers cannot load it: {str(e).splitlines()[0]}", hf_dir) from None
    return model.to(device).eval(), "transformers' own"


def run_fp8_parity(ck, hf_dir, dtype, backend, tokens, device, attn, numerics) -> ParityReport:
    from nanokern.convert import convert
    from nanokern.parity.check import EPS, TOP1_MARGIN_REL, _check_shapes, make_tokens
    from nanokern.parity.native import NativeModel
    from nanokern.parity.reference import hf_forward, load_hf, read_hf_config

    if dtype not in ("fp32", "float32"):
        raise NanokernError("an FP8 folder is compared in fp32 (--dtype fp32): its weights are dequantized to float32",
                            hf_dir)
    timings = {}
    t0 = time.perf_counter()
    cfg = read_hf_config(hf_dir)
    _check_shapes(ck, cfg, hf_dir)
    problems, kinds, partial = check_weights(ck.step_dir, hf_dir)
    timings["weights_s"] = time.perf_counter() - t0
    native = NativeModel(ck, "fp32", backend, device, numerics)
    vocab = min(ck.spec.vocab_size, int(cfg.get("vocab_size", ck.spec.vocab_size)))
    tokens = make_tokens(vocab, *tokens) if isinstance(tokens, tuple) else tokens
    out = native(tokens)
    dev = native.device
    with tempfile.TemporaryDirectory(prefix="nanokern-parity-fp8-") as tmp:
        t0 = time.perf_counter()
        model, whose = _reference(hf_dir, Path(tmp), partial, dev, attn)
        ref = hf_forward(model, tokens)
        hf_class = type(model).__name__
        del model
        convert(ck.step_dir, Path(tmp) / "keep", to="hf", dtype="keep", force=True, progress=False)
        floor = hf_forward(load_hf(Path(tmp) / "keep", torch.float32, dev, attn), tokens)
        timings["hf_s"] = time.perf_counter() - t0
    rows = []
    pairs = [(f"layer {i}", ref.layers[i], out.layers[i], floor.layers[i]) for i in range(len(ref.layers))]
    pairs.append(("final_norm", ref.final_norm, out.final_norm, floor.final_norm))
    for name, r, t, f in pairs:
        row = Row(name, M.compare(r, t), M.compare(r, f))
        row.limits = {k: LOW_FACTOR * row.floor[k] + EPS[k] * (row.metrics["scale"] if k.endswith("_abs") else 1.0)
                      for k in M.ERROR_METRICS}
        row.check()
        rows.append(row)
    rl, tl, fl_l = ref.logits[..., :vocab], out.logits[..., :vocab], floor.logits[..., :vocab]
    scale = float(rl.abs().max())
    max_lim = LOW_FACTOR * M.compare(rl, fl_l)["max_abs"] + EPS["max_abs"] * scale
    margin = max(TOP1_MARGIN_REL * scale, 2 * max_lim)
    fl = M.compare_logits(rl, fl_l, margin)
    row = Row("logits", M.compare_logits(rl, tl, margin), fl)
    row.limits = {k: LOW_FACTOR * fl[k] + EPS[k] * (scale if k.endswith("_abs") else 1.0) for k in M.LOGIT_ERROR_METRICS}
    row.check()
    rows.append(row)
    weights = Row("fp8 weights", {"max_abs": 0.0, "mean_abs": 0.0, "rel_l2": 0.0, "one_minus_cos": 0.0,
                                  "outside_bound": float(len(problems))}, limits={"outside_bound": 0.0})
    weights.check()
    rule = ("FP8 folder: weights within e4m3's rounding bound of the checkpoint's, |d - x| <= (2^-4 + 2^-21)|x| + "
            "(2^-10 + 2^-30) scale_inv (3 mantissa bits); forward fp32 native vs transformers fp32 on the dequantized "
            f"weights ({whose} dequantization): every error metric <= {LOW_FACTOR:g} x transformers' own error on the "
            "checkpoint's weights vs the dequantized ones (the e4m3 noise floor) + eps")
    notes = list(native.notes) + list(ck.warnings)
    if row.metrics["top1_counted"] == 0:
        notes.append("no position has a top-1 margin above the e4m3 noise: top-1 agreement is vacuous")
    notes.append(f"FP8 weights: {len(kinds.get('exact', []))} re-quantize to the stored bytes exactly, "
                 f"{len(kinds.get('bound', []))} checked against the bound; {len(problems)} outside it"
                 + (f" (first: {problems[0]})" if problems else ""))
    return ParityReport(
        ckpt=os.fspath(ck.step_dir), hf_dir=os.fspath(hf_dir), dtype="fp32 vs fp8", backend=native.backend,
        device=str(dev), numerics=numerics, attn_implementation=attn, tokens_shape=list(tokens.shape), seed=None,
        vocab_compared=vocab, rows=[weights, *rows], rule=rule, tp=ck.tp, pp=ck.pp, rope_interleaved=ck.rope_interleaved,
        notes=notes, timings={k: round(v, 3) for k, v in timings.items()}, hf_class=hf_class)
