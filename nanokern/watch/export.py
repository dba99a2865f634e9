"""One step exported through convert's own code (make_plan, then execute), so the bytes, the
atomic rename, the resume after a kill and the output's lock are convert's. Under torchrun every
rank calls this for the same step; a plan that fails on any rank fails on all of them."""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

from nanokern.errors import NanokernError, OutOfSpace


@dataclass
class ExportOptions:
    """The convert options a watch passes on (see `nanokern convert --help`)."""

    dtype: str | None = None
    tokenizer: str | None = None
    vocab_size: int | None = None
    max_shard_size: str = "5GB"
    hf_arch: str | None = None
    workers: int | None = None
    device: str = "cpu"
    backend: str = "auto"
    progress: bool = True
    said_tokenizer: str = ""  # the tokenizer line, said once while it stays the same
    fp8_scale: str = "float"  # --dtype fp8: the block scales (plan/fp8.py)


def export_step(step_dir: Path, out: Path, o: ExportOptions, dist=None, say=None):
    """Export step_dir to out (absent); returns (plan, execute's Report). Raises NanokernError,
    OutOfSpace, OSError, or signals.Interrupted."""
    from nanokern.convert import make_plan
    from nanokern.execute import execute

    plan, error = None, None
    try:
        tokenizer = o.tokenizer
        if tokenizer is None:  # as convert: the tokenizer the step's config.yaml names, if there is one here
            from nanokern.formats.tokenizer import named_by_checkpoint

            folder, why = named_by_checkpoint(step_dir)
            tokenizer = None if folder is None else str(folder)
            if say and why != o.said_tokenizer:
                say(f"tokenizer: {why}" + ("" if folder else ": exported without one; add one with --tokenizer DIR"))
                o.said_tokenizer = why
        plan = make_plan(step_dir, "hf", o.dtype, vocab_size=o.vocab_size, tokenizer=tokenizer,
                         max_shard_size=o.max_shard_size, hf_arch=o.hf_arch, fp8_scale=o.fp8_scale)
    except (NanokernError, OSError, ValueError) as e:
        error = e
    if dist is not None:  # every rank planned from the same files: one verdict for all
        errors = [None] * dist.get_world_size()
        dist.all_gather_object(errors, None if error is None else str(error))
        bad = [(r, e) for r, e in enumerate(errors) if e is not None]
        if error is None and bad:
            error = NanokernError(f"rank {bad[0][0]} failed to plan: {bad[0][1]}")
    if error is not None:
        raise error
    if say:
        for w in plan.warnings:
            say(f"warning: {w}")
    report = execute(plan, out, backend=o.backend, device=o.device, workers=o.workers, force=False, progress=o.progress)
    return plan, report


def out_of_space(e: BaseException) -> bool:
    """The disk of OUT_ROOT is full: the watch stops. execute raises OutOfSpace for it, on every
    rank when it happened on one (the kind travels with the message), so the type says it; never
    the text, which may quote a path."""
    return isinstance(e, OutOfSpace) or (isinstance(e, OSError) and e.errno == errno.ENOSPC)


def export_dtype(plan) -> str:
    """The dtype the export holds (torch's name), for the parity check."""
    return str(plan.summary.get("dtype", ""))
