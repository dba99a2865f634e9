"""`parity --generate N`: greedy continuations of the parity prompts, the native decoder over
the Nanotron checkpoint (nanokern/generate/decoder.py: KV cache, one token at a time) against
transformers' generate() on the HF folder (its own cache), token by token.

Per sequence: the first new-token position where the two differ, and there the reference's
top-1 margin (its best logit minus its second best) and the gap between its best logit and the
logit of the token the native side chose. A difference counts as a failure when that gap is
above the dtype's noise floor (the gap is >= the top-1 margin, so this fails wherever the margin
does, and also where the native side picked a token far down the reference's ranking):
- fp32: 1e-3 x max|reference logits| (the forward's top-1 rule);
- bf16 (both sides in bf16): the forward's self-calibrated margin, max(1e-3 x scale, 2 x (2 x
  floor + 1e-6 x scale)), where floor is the max |diff| between transformers' bf16 and fp32
  logits on the reference's own sequence (teacher-forced, the generating positions).
After the first difference the sequences are no longer comparable: nothing after it is counted.

Up to and including the first difference both sides have seen the same tokens, so their logits
are compared there too, with the forward's logits rule: max |diff| <= 1e-4 x max(1, scale) in
fp32; in bf16 <= 2 x floor + 1e-6 x scale. This catches a decoder error long before it flips a
token (on near-uniform models it may never flip one within N tokens).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from nanokern.formats.nanotron import NanotronCheckpoint, read_checkpoint
from nanokern.parity.check import EPS, FP32_LOGITS_ATOL, LOW_FACTOR, TOP1_MARGIN_REL, _check_shapes, _dtype_name, make_tokens
from nanokern.parity.native import NativeModel, torch_dtype
from nanokern.parity.report import display_name


@dataclass
class SeqResult:
    index: int
    equal_prefix: int  # new tokens equal before the first difference (= N when all equal)
    first_diff: int | None  # new-token index of the first difference (None: all equal)
    native_token: int | None = None
    ref_token: int | None = None
    ref_margin: float | None = None  # reference top-1 minus top-2 logit at first_diff
    ref_gap: float | None = None  # reference top-1 logit minus its logit of native_token
    logits_max_abs: float = 0.0  # native vs reference logits over the steps up to first_diff
    failed: bool = False


@dataclass
class GenerateReport:
    ckpt: str
    hf_dir: str | None
    dtype: str
    backend: str
    n_new: int
    prompt_shape: list
    threshold: float  # the noise floor a difference's gap must stay under
    scale: float
    floor_max_abs: float | None
    logits_limit: float
    seqs: list[SeqResult]
    rule: str
    hf_class: str = ""
    fault: str | None = None
    native_decode_tok_s: float = 0.0
    hf_tok_s: float = 0.0  # transformers' decode steps (first new token to the last)
    notes: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not any(s.failed for s in self.seqs)

    @property
    def all_equal(self) -> bool:
        return all(s.first_diff is None for s in self.seqs)

    def table(self) -> str:
        head = (f"generate parity  {display_name(self.ckpt)} vs {self.hf_class or 'transformers'} generate(): "
                f"{self.dtype}, {self.backend}, prompts {self.prompt_shape}, {self.n_new} greedy tokens"
                + (f"  [FAULT {self.fault}]" if self.fault else ""))
        lines = [head, f"  rule: {self.rule}; noise floor {self.threshold:.3e} (scale {self.scale:.3g}); "
                       f"logits up to the first difference within {self.logits_limit:.3e}"]
        for s in self.seqs:
            lg = f"logits max|diff| {s.logits_max_abs:.3e}" + (" (ABOVE the limit)" if s.logits_max_abs > self.logits_limit else "")
            if s.first_diff is None:
                lines.append(f"  seq {s.index}: all {self.n_new} tokens equal; {lg}" + (" -> FAIL" if s.failed else ""))
            else:
                tie = "near-tie (within the noise floor)" if s.ref_gap <= self.threshold else "above the noise floor"
                lines.append(f"  seq {s.index}: first difference at new token {s.first_diff} (native {s.native_token}, "
                             f"transformers {s.ref_token}); reference top-1 margin {s.ref_margin:.3e}, gap to the native "
                             f"pick {s.ref_gap:.3e}: {tie}; {lg} -> {'FAIL' if s.failed else 'ok'}")
        lines.append(f"  decode tokens/s (one cold run each; `bench generate` measures): native {self.native_decode_tok_s:.1f}, "
                     f"transformers generate() {self.hf_tok_s:.1f}")
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"  -> {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed, "all_equal": self.all_equal}


@torch.no_grad()
def _teacher_forced(model, seq: torch.Tensor, S: int) -> torch.Tensor:
    dev = next(model.parameters()).device
    logits = model(input_ids=seq.to(dev), use_cache=False).logits
    return logits[:, S - 1:-1].float().cpu()


def run_generate_parity(ckpt, hf_dir=None, n_new: int = 32, dtype: str = "fp32", backend: str = "auto",
                        tokens: torch.Tensor | None = None, seed: int = 0, seq_len: int = 32, batch: int = 2,
                        device: str | None = None, attn_implementation: str = "eager",
                        fault: str | None = None, native=None) -> GenerateReport:
    """Native greedy decoding vs transformers' generate(); see the module docstring.
    fault: a nanokern.generate.decoder fault (negative controls). native: a prebuilt NativeModel."""
    torch_dtype(dtype)
    if n_new < 1:
        raise ValueError("--generate needs N >= 1 new tokens")
    ck = ckpt if isinstance(ckpt, NanotronCheckpoint) else read_checkpoint(ckpt)
    if hf_dir is None:
        from nanokern.convert import convert

        with tempfile.TemporaryDirectory(prefix="nanokern-genparity-") as tmp:
            convert(ck.step_dir, Path(tmp) / "hf", to="hf", dtype="keep", force=True, progress=False)
            rep = run_generate_parity(ck, Path(tmp) / "hf", n_new, dtype, backend, tokens, seed, seq_len, batch, device,
                                      attn_implementation, fault, native)
        rep.hf_dir = None
        rep.notes.insert(0, "HF model: a temporary export by nanokern.convert (dtype keep)")
        return rep

    from nanokern.generate.decoder import Decoder
    from nanokern.generate.reference import hf_generate
    from nanokern.parity.reference import load_hf, read_hf_config, tokenizer_vocab_size

    cfg = read_hf_config(hf_dir)
    _check_shapes(ck, cfg, hf_dir)
    low = torch_dtype(dtype) != torch.float32
    native = native or NativeModel(ck, dtype, backend, device)
    vocab = min(ck.spec.vocab_size, int(cfg.get("vocab_size", ck.spec.vocab_size)))
    tv = tokenizer_vocab_size(hf_dir)
    if tokens is None:
        tokens = make_tokens(min(vocab, tv) if tv else vocab, batch, seq_len, seed)
    else:
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        tokens = tokens[None] if tokens.dim() == 1 else tokens
        seed = None
    B, S = tokens.shape
    gen = Decoder(native, fault, vocab=vocab).generate(tokens, n_new, keep_logits=True)
    got = torch.tensor(gen.new_ids)
    nl = torch.stack(gen.logits, 1)  # [B, N, vocab] float32

    ref_model = load_hf(hf_dir, torch_dtype(dtype), native.device, attn_implementation)
    hf_class = type(ref_model).__name__
    ref = hf_generate(ref_model, tokens, n_new)
    want = torch.tensor(ref.new_ids)
    rl = ref.logits[..., :vocab]
    seq = torch.cat([tokens, want], 1)
    floor = None
    if low:
        low_logits = _teacher_forced(ref_model, seq, S)[..., :vocab]
        del ref_model
        fp32_logits = _teacher_forced(load_hf(hf_dir, torch.float32, native.device, attn_implementation), seq, S)[..., :vocab]
        scale = float(fp32_logits.abs().max())
        floor = float((low_logits - fp32_logits).abs().max())
        max_lim = LOW_FACTOR * floor + EPS["max_abs"] * scale
        threshold = max(TOP1_MARGIN_REL * scale, 2 * max_lim)
        logits_limit = max_lim
        rule = (f"bf16: a difference fails where the reference's gap to the native pick > max({TOP1_MARGIN_REL:g} x scale, "
                f"2 x ({LOW_FACTOR:g} x transformers' own bf16 error + eps))")
    else:
        del ref_model
        scale = float(rl.abs().max())
        threshold = TOP1_MARGIN_REL * scale
        logits_limit = FP32_LOGITS_ATOL * max(1.0, scale)
        rule = f"fp32: a difference fails where the reference's gap to the native pick > {TOP1_MARGIN_REL:g} x max|logits|"

    seqs = []
    for b in range(B):
        diff = (got[b] != want[b]).nonzero()
        upto = n_new if len(diff) == 0 else int(diff[0]) + 1
        lmax = float((nl[b, :upto] - rl[b, :upto]).abs().max())
        if len(diff) == 0:
            seqs.append(SeqResult(b, n_new, None, logits_max_abs=lmax, failed=lmax > logits_limit))
            continue
        j = int(diff[0])
        lg = rl[b, j]
        top2 = lg.topk(2).values
        margin = float(top2[0] - top2[1])
        gap = float(lg.max() - lg[int(got[b, j])])
        seqs.append(SeqResult(b, j, j, int(got[b, j]), int(want[b, j]), margin, gap, lmax,
                              gap > threshold or lmax > logits_limit))
    notes = list(native.notes)
    if fault:
        notes.append(f"DECODER FAULT INJECTED: {fault}")
    hf_tok = B * (n_new - 1) / ref.decode_s if ref.decode_s > 0 else 0.0  # decode steps, as the native side counts
    return GenerateReport(os.fspath(ck.step_dir), os.fspath(hf_dir), _dtype_name(dtype), native.backend, n_new, [B, S],
                          threshold, scale, floor, logits_limit, seqs, rule, hf_class, fault, gen.decode_tok_s, hf_tok, notes)
