"""`nanokern inspect`: what a checkpoint holds and what converting it would do."""

from __future__ import annotations

import dataclasses

from nanokern.convert import load_source, parse_tristate
from nanokern.errors import NanokernError
from nanokern.formats.hf_plan import plan_hf
from nanokern.io.units import human_bytes


def _pp_stages(owner: dict[str, int], pp: int) -> list[str]:
    lines = []
    for rank in range(pp):
        blocks = [b for b, r in owner.items() if r == rank and b not in ("cast_to_fp32", "loss")]
        layers = [int(b.split(".")[1]) for b in blocks if b.startswith("decoder.")]
        parts = [b for b in blocks if not b.startswith("decoder.")]
        if layers:
            parts.insert(1 if "embedding" in parts else 0, f"layers {layers[0]}-{layers[-1]}" if len(layers) > 1 else f"layer {layers[0]}")
        lines.append(f"    PP rank {rank}: {', '.join(parts) or '(nothing)'}")
    return lines


def _steps_section(path, inspected: str) -> tuple[list[str], list[dict]]:
    """A checkpoints folder: every step in it (complete or why not, size, time)."""
    from pathlib import Path

    from nanokern.formats.nanotron import steps as S

    root = Path(path)
    if (root / "model").is_dir() or not root.is_dir():
        return [], []
    found, links = S.list_steps(root), []
    S.step_names(root, links)
    if not found and not links:
        return [], []
    verdicts = {s.name: S.verdict(s.path) for s in found}
    chosen = Path(inspected).name if Path(inspected).parent.resolve() == root.resolve() else None
    latest = root / "latest.txt"
    head = f"latest.txt: {latest.read_text(errors='replace').strip()!r}" if latest.is_file() else "no latest.txt"
    if _stale(root):
        head += ", stale: no such step"
    lines = [f"  steps: {len(found)} in this folder ({head}; {sum(v.complete for v in verdicts.values())} complete)"]
    lines += S.describe(found, verdicts, chosen)
    if links:
        lines.append(f"  skipped: {', '.join(links)} (symlink{'s' if len(links) > 1 else ''}: a step folder is never "
                     "read through a link)")
    facts = [{"step": s.number, "path": str(s.path), "complete": verdicts[s.name].complete,
              "reason": verdicts[s.name].reason, "bytes": s.bytes, "files": s.files, "mtime": s.mtime} for s in found]
    return lines, facts


def _stale(root) -> str | None:
    """The step a checkpoints folder's latest.txt names when that step folder is not there."""
    latest = root / "latest.txt"
    if not latest.is_file() or (root / "model").is_dir():
        return None
    name = latest.read_text(errors="replace").strip()
    return name if name.isascii() and name.isdigit() and not (root / name).exists() else None


def _instead_of_stale(path) -> tuple[str, str] | None:
    """A checkpoints folder whose latest.txt names a step that is gone: (its newest complete
    step, the line saying so), so that the steps are shown rather than an error."""
    from pathlib import Path

    from nanokern.formats.nanotron import steps as S

    root = Path(path)
    name = _stale(root) if root.is_dir() else None
    if name is None:
        return None
    try:
        found = S.newest_complete(root)
    except NanokernError:
        return None
    if found is None:
        return None
    return str(found[0]), (f"{root / 'latest.txt'} is stale: it names step {name}, which is not there; "
                           f"showing step {found[0].name}, the newest complete")


def inspect_checkpoint(path, rope_interleaved: str = "auto") -> tuple[str, dict]:
    stale = _instead_of_stale(path)
    try:
        model = _load(stale[0] if stale else path, parse_tristate(rope_interleaved))
    except NanokernError as e:  # a checkpoints folder whose step cannot be read: which steps are there
        _, steps = _steps_section(path, "")
        if not steps or "no complete step" in e.message:
            raise
        listing = ", ".join(f"{s['step']} {'complete' if s['complete'] else 'incomplete'}" for s in steps)
        raise NanokernError(f"{e.message} (steps in {path}: {listing})", e.path) from None
    s, lay = model.spec, model.layout
    dtype = str(model.dtype)
    facts = {
        "path": model.path,
        "format": model.origin,
        "dtype": dtype,
        "parameters": model.num_parameters(),
        "config": {k: v for k, v in s.__dict__.items() if k != "moe"} | {"moe": s.moe.__dict__ if s.moe else None},
        "family": model.family.name,
        "hf_class": model.family.hf_class,
        "features": s.features(),
        "layout": {"format": model.origin, **{k: v for k, v in dataclasses.asdict(lay).items() if k != "pp_owner"}},
        "warnings": model.warnings,
    }
    lines = [f"{model.origin} checkpoint {model.path}"]
    if stale:
        lines.append(f"  note: {stale[1]}")
        facts["latest_stale"] = stale[1]
    if model.origin == "nanotron":
        step_lines, facts["steps"] = _steps_section(path, model.path)
        lines += step_lines
    if model.origin == "nanotron":
        cls = {"qwen2": "Qwen2Config", "llama": "LlamaConfig"}[lay.config_class]
        lines.append(f"  layout: {cls}, TP={lay.tp} PP={lay.pp}, {lay.files} weight file(s)"
                     + (" (legacy v0.5 file names)" if lay.bad_naming else ""))
        lines += _pp_stages(lay.pp_owner, lay.pp)
        facts["pp_stages"] = {r: [b for b, o in lay.pp_owner.items() if o == r] for r in range(lay.pp)}
        lines.append(f"  RoPE: {'interleaved (GPT-J): q/k rows are permuted on export' if lay.rope_interleaved else 'half-split (HF convention): no q/k permutation'}")
    else:
        lines.append(f"  layout: {lay.files} safetensors file(s){' with index' if lay.sharded else ''}")
    lines += [
        f"  model: {model.family.hf_class} ({', '.join(s.features()) or 'plain LLaMA: no bias, RoPE everywhere, full attention, dense'}), {s.num_hidden_layers} layers, hidden {s.hidden_size}, intermediate {s.intermediate_size}, "
        f"heads {s.num_attention_heads} (kv {s.num_key_value_heads}, head_dim {s.head_dim}), vocab {s.vocab_size} rows",
        f"  rope_theta {s.rope_theta}, rope_scaling {s.rope_scaling}, rms_norm_eps {s.rms_norm_eps}, "
        f"tied embeddings: {s.tie_word_embeddings}",
        f"  dtype {dtype}, {model.num_parameters():,} parameters ({human_bytes(sum(t.dtype.itemsize * (t.shape[0] * (t.shape[1] if len(t.shape) > 1 else 1)) for t in model.tensors.values()))})",
    ]
    if model.origin == "nanotron":
        plan = plan_hf(model)
        lines.append(f"  convert --to hf: {model.family.hf_class}, {len(plan.files)} file(s), {plan.num_tensors} tensors, bf16, "
                     f"{human_bytes(plan.nbytes)}; qkv_proj -> q/k/v_proj, gate_up_proj -> gate/up_proj"
                     + (", experts transposed per expert" if s.moe else "")
                     + (", lm_head tied to the embedding" if s.tie_word_embeddings else ""))
        for w in plan.warnings[len(model.warnings):]:
            lines.append(f"  note: {w}")
        facts["convert_to_hf"] = {"files": [f.path for f in plan.files], "bytes": plan.nbytes}
    else:
        lines.append("  convert --to nanotron --tp N --pp M: fuses q/k/v and gate/up, shards by TP, places layers by PP cost"
                     + (", merges experts input-major, router kept float32" if s.moe else ""))
    fp8 = _fp8_lines(model, facts)
    lines += fp8
    for w in model.warnings:
        if not (fp8 and w.startswith("FP8 folder")):
            lines.append(f"  warning: {w}")
    return "\n".join(lines), facts


def _load(path, rope_interleaved):
    """The checkpoint as a logical model; a HF folder's FP8 weights as stored (not dequantized)."""
    from pathlib import Path

    from nanokern.formats import hf, nanotron

    p = Path(path)
    if p.exists() and hf.is_hf(p) and not nanotron.is_nanotron(p):
        return hf.read_hf(p, dequantize=False)
    return load_source(path, rope_interleaved)


def _fp8_lines(model, facts: dict) -> list[str]:
    """An FP8 folder: its scheme, which weights are FP8, and what an import does with them."""
    from pathlib import Path

    from nanokern.formats import hf, hf_fp8
    from nanokern.io.dtypes import FLOAT8_E4M3
    from nanokern.io.safetensors import read_header

    if model.origin != "hf" or not any(t.dtype == FLOAT8_E4M3 for t in model.tensors.values()):
        return []
    d = Path(model.path)
    cfg = hf.read_config(d)
    refs = {n: r for f in sorted({b.ref.path for t in model.tensors.values() for b in t.blocks})
            for n, r in read_header(f).tensors.items()}
    q = hf_fp8.summary(cfg, refs, d / "config.json")
    facts["quantization"] = q
    weights = sum(1 for n in model.tensors if n.endswith(".weight"))
    skip = q["modules_to_not_convert"]
    return [f"  quantization: {q['scheme']}: {q['quantized']} of {weights} weights float8_e4m3fn with weight_scale_inv "
            f"({human_bytes(q['fp8_bytes'])}" + (f", {q['with_partial_blocks']} with partial edge blocks" if q["with_partial_blocks"] else "")
            + ")" + (f"; modules_to_not_convert: {', '.join(skip[:3])}" + (f" and {len(skip) - 3} more" if len(skip) > 3 else "") if skip else ""),
            "  import: each FP8 weight dequantized (e4m3 x its block's scale_inv, one float32 product), then cast to --dtype "
            f"(keep: {model.dtype})"]
