"""The conversion API behind `nanokern convert`: detect the source, plan, execute."""

from __future__ import annotations

import os
from pathlib import Path

from nanokern.errors import NanokernError
from nanokern.execute import Report, execute
from nanokern.execute.replace import check_apart, check_target
from nanokern.formats import hf, hf_plan, nanotron
from nanokern.plan.model import Model
from nanokern.plan import Plan


def parse_tristate(value: str | bool | None) -> bool | None:
    """auto|true|false -> None|True|False."""
    if value is None or isinstance(value, bool):
        return value
    v = value.lower()
    if v == "auto":
        return None
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    raise ValueError(f"expected auto, true or false, got {value!r}")


def load_source(src: str | os.PathLike, rope_interleaved: bool | None = None, hf_arch: str | None = None) -> Model:
    """Read a Nanotron checkpoint (checkpoints_path or step folder) or a HF folder. hf_arch: the
    HF class a Nanotron checkpoint's tensors are named for (default: the first that holds it)."""
    p = Path(src)
    if not p.exists():
        raise NanokernError("does not exist", p)
    if nanotron.is_nanotron(p):
        return nanotron.to_model(nanotron.read_checkpoint(p), rope_interleaved, hf_arch)
    if hf.is_hf(p):
        return hf.read_hf(p, dequantize=True)
    if p.is_dir() and not any(p.iterdir()):
        raise NanokernError("empty folder: no checkpoint here", p)
    raise NanokernError("not a Nanotron checkpoint (latest.txt or model/) nor a HF folder (config.json)", p)


def make_plan(
    src,
    to: str | None = None,
    dtype: str | None = None,
    vocab_size: int | None = None,
    tokenizer: str | None = None,
    rope_interleaved: str | bool | None = "auto",
    max_shard_size: str = "5GB",
    tp: int | None = None,
    pp: int | None = None,
    make_vocab_size_divisible_by: int = 1,
    hf_arch: str | None = None,
    nanotron_config: str | None = None,
    fp8_scale: str = "float",
) -> Plan:
    """fp8_scale: an FP8 export's scales, "float" or "ue8m0" (plan/fp8.py)."""
    interleaved = parse_tristate(rope_interleaved)
    target = to or ("hf" if _source_is_nanotron(src) else "nanotron")
    if hf_arch and target != "hf":
        raise NanokernError("--hf-arch names the HF class of a HF output (--to hf)", src)
    if nanotron_config and target != "nanotron":
        raise NanokernError("--nanotron-config names the config class of a Nanotron output (--to nanotron)", src)
    model = load_source(src, _source_override(src, target, interleaved), hf_arch)
    if target == "hf":
        if tp not in (None, 1) or pp not in (None, 1):
            raise NanokernError("--tp/--pp describe Nanotron output; HF output is unsharded by layers", src)
        return hf_plan.plan_hf(model, dtype or "bf16", vocab_size, max_shard_size, tokenizer, fp8_scale)
    if target == "nanotron":
        from nanokern.formats.nanotron.writer import plan_nanotron

        if fp8_scale != "float":
            raise NanokernError(f"--fp8-scale {fp8_scale} describes FP8 HF exports, not Nanotron output", src)
        out_interleaved = interleaved if interleaved is not None else False
        if model.origin == "nanotron" and interleaved is None:
            out_interleaved = model.layout.rope_interleaved
        recorded = getattr(model.layout, "nanotron_source", None)  # a nanokern export: its source's RoPE rows
        if recorded and interleaved is None:
            out_interleaved = recorded[2]
        return plan_nanotron(model, tp or 1, pp or 1, dtype or "keep", vocab_size, make_vocab_size_divisible_by, out_interleaved,
                             nanotron_config)
    raise ValueError(f"unknown target {target!r}: choose hf or nanotron")


def _source_override(src, target: str, interleaved: bool | None) -> bool | None:
    """How --rope-interleaved applies to the source. HF sources have no such flag. For a Nanotron
    -> HF export it says how the source was trained (overriding model_config.json). For a reshard
    it describes the output; it also tells how to read the source only when the source's
    model_config.json has no rope_interleaved key (then the output keeps the source's rows and
    records the flag)."""
    if interleaved is None or not _source_is_nanotron(src):
        return None
    if target == "hf":
        return interleaved
    cfg = nanotron.read_model_config(nanotron.find_step_dir(src))
    return interleaved if cfg.get("rope_interleaved") is None else None


def _source_is_nanotron(src) -> bool:
    return nanotron.is_nanotron(Path(src))


def check_inputs_apart(src, dst, tokenizer=None) -> None:
    """Neither the source nor the tokenizer folder may be, hold or lie inside the output."""
    check_apart(src, dst)
    if tokenizer is not None:
        check_apart(tokenizer, dst, "the tokenizer folder")


def convert(
    src,
    dst,
    to: str | None = None,
    dtype: str | None = None,
    backend: str = "auto",
    device: str = "cpu",
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
    **plan_options,
) -> tuple[Plan, Report]:
    dst = Path(dst)
    check_inputs_apart(src, dst, plan_options.get("tokenizer"))
    check_target(dst, force)
    plan = make_plan(src, to, dtype, **plan_options)
    report = execute(plan, dst, backend=backend, device=device, workers=workers, force=force, progress=progress)
    return plan, report
