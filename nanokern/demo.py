"""`nanokern demo`: the whole loop on a tiny LLaMA generated on the spot (works offline).

1. generate a tiny random LLaMA (GQA, padded vocab) and write it in Nanotron layout at TP=2,
   PP=2 with interleaved RoPE (the layout that broke earlier converters);
2. convert it to HF with nanokern;
3. load the export with transformers and compare its logits with the generating weights run
   through transformers (must be identical), and run the parity check of the native-layout
   forward against the export.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click
import torch

from nanokern import arch
from nanokern.arch.family import Family
from nanokern.arch.spec import ModelSpec, MoeSpec
from nanokern.formats.hf_plan import dump_json, generation_config

DEMO_SPEC = dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=4, vocab_size=500, rms_norm_eps=1e-5, max_position_embeddings=256)
# the features of each --arch on top of DEMO_SPEC
DEMO_ARCHS = {
    "llama": {},
    "qwen2": {"attention_bias": True, "sliding_window": 5},
    "smollm3": {"no_rope_layer": 2, "rope_theta": 50000.0},
    "moe": {"attention_bias": True, "moe": MoeSpec(4, 2, 64, 96, [0, 2])},
}


def demo_spec(name: str) -> ModelSpec:
    try:
        return ModelSpec(**DEMO_SPEC, **DEMO_ARCHS[name])
    except KeyError:
        raise ValueError(f"unknown demo architecture {name!r}: choose {', '.join(DEMO_ARCHS)}") from None


def tiny_weights(family: Family, spec: ModelSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random fp32 weights with enough structure that a wrong layout changes the logits."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape, *_ in family.hf_tensors(spec):
        if name.endswith(".bias"):
            out[name] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            out[name] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            out[name] = torch.randn(shape, generator=g) * (1.0 / shape[1] ** 0.5) * 2
    return out


def write_hf(folder: Path, family: Family, spec: ModelSpec, weights: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_bytes(dump_json(family.hf_config(spec, "float32", spec.vocab_size)))
    (folder / "generation_config.json").write_bytes(dump_json(generation_config(spec)))


def _logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return model(ids).logits


def run_demo(workdir: str | None = None, backend: str = "auto", arch_name: str = "llama") -> bool:
    from nanokern.convert import convert

    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="nanokern-demo-")
        workdir = tmp.name
    root = Path(workdir)
    try:
        device = "cuda" if backend in ("cuda", "triton") and torch.cuda.is_available() else "cpu"
        spec = demo_spec(arch_name)
        family = arch.choose(spec, None, "demo")
        weights = tiny_weights(family, spec)
        extra = "".join(f", {f}" for f in spec.features())
        click.echo(f"1. tiny {family.hf_class}: {spec.num_hidden_layers} layers, hidden {spec.hidden_size}, "
                   f"{spec.num_attention_heads} heads / {spec.num_key_value_heads} KV heads, vocab {spec.vocab_size}{extra}")
        write_hf(root / "generated-hf", family, spec, weights)
        nt = root / "nanotron-tp2-pp2"
        _, rep = convert(root / "generated-hf", nt, to="nanotron", tp=2, pp=2, rope_interleaved="true",
                         make_vocab_size_divisible_by=8, backend=backend, device=device, force=True, progress=False)
        mc = json.loads((nt / "0" / "model_config.json").read_text())
        click.echo(f"   written in Nanotron layout: TP=2 PP=2, interleaved RoPE, vocab padded to {mc['vocab_size']}, "
                   f"{rep.files} files -> {nt}")
        hf_out = root / "exported-hf"
        t0 = time.perf_counter()
        _, rep = convert(nt, hf_out, to="hf", dtype="fp32", vocab_size=spec.vocab_size, backend=backend,
                         device=device, force=True, progress=False)
        click.echo(f"2. nanokern convert -> HF: {rep.tensors} tensors, {rep.bytes / 1e6:.1f} MB in "
                   f"{time.perf_counter() - t0:.2f} s (backend {rep.backend}, device {device}) -> {hf_out}")
        ids = torch.randint(0, spec.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
        ref = _logits(root / "generated-hf", ids)
        got = _logits(hf_out, ids)
        diff = (ref - got).abs().max().item()
        agree = (ref.argmax(-1) == got.argmax(-1)).float().mean().item()
        ok = diff == 0.0
        click.echo(f"3. transformers on the export vs on the generating weights: max |diff| {diff:.3g}, "
                   f"top-1 agreement {agree:.1%} -> {'identical' if ok else 'MISMATCH'}")
        ok = _parity(nt, hf_out, backend) and ok
        click.echo("demo passed" if ok else "demo FAILED")
        return ok
    finally:
        if tmp is not None:
            tmp.cleanup()


def _parity(nt: Path, hf_out: Path, backend: str) -> bool:
    from nanokern.parity import run_parity

    report = run_parity(nt, hf_dir=hf_out, dtype="fp32", backend="auto" if backend in ("cpu", "cuda") else backend)
    click.echo("4. parity: native Nanotron-layout forward vs transformers, layer by layer")
    click.echo(report.table())
    return report.passed
