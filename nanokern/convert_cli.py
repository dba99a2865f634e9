"""`nanokern convert`: the click command (registered by nanokern/cli.py), and what the other
commands of the top level share with it (the dtype and backend choices, the BLAS-thread setting,
the quick exit)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from nanokern.arch import BY_CLASS
from nanokern.cli_report import json_option, json_stdout, run_guarded, warn_line, write_json
from nanokern.io import dtypes
from nanokern.io.units import human_bytes, parse_size, positive_size
from nanokern.ops.backends import BACKENDS

QUICK_EXIT = []  # set by a command whose work is complete and durable: skip the interpreter's teardown

DTYPES = click.Choice(dtypes.choices(keep=True))
BACKEND_CHOICE = click.Choice(["auto", *BACKENDS])
HF_CLASSES = list(BY_CLASS)
FP8_SCALE_HELP = ("--dtype fp8: each 128x128 block's weight_scale_inv: float (1/scale, transformers' default) or ue8m0 "
                  "(rounded up to a power of two, as transformers' and vLLM's scale_fmt \"ue8m0\" and DeepSeek-V3.1; "
                  "for DeepGEMM on Blackwell). Written float32; config.json says scale_fmt.")


def no_blas_threads() -> None:
    """For the commands that never call BLAS (convert, inspect, verify), before numpy is imported:
    numpy's OpenBLAS otherwise starts a thread per core at import, which spin for a while; on
    a 2-core machine that took about 0.1 s of CPU from a conversion, and 30-50 ms of its
    start-up. A value the user set wins."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


@click.command("convert")
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option("--to", "to", type=click.Choice(["hf", "nanotron"]), help="Target format [default: the other one].")
@click.option("--dtype", type=DTYPES, default=None, help="Output dtype, round-to-nearest-even [default: bf16 for HF, keep for Nanotron].")
@click.option("--fp8-scale", type=click.Choice(["float", "ue8m0"]), default="float", show_default=True, help=FP8_SCALE_HELP)
@click.option("--backend", type=BACKEND_CHOICE, default="auto", show_default=True, help="gather_cast implementation (all give the same bytes).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cuda: gather and cast on the GPU (LOCAL_RANK's GPU under torchrun), staged through pinned buffers.")
@click.option("--staging-budget", type=positive_size, default="1GB", show_default=True, help="--device cuda: pinned + device staging memory.")
@click.option("--vocab-size", type=int, default=None, help="True vocabulary size: trims Nanotron's padded rows.")
@click.option("--tokenizer", type=click.Path(exists=True, file_okay=False), default=None,
              help="Copy this tokenizer into a HF output [default: the one config.yaml's tokenizer_name_or_path names, "
                   "a folder or a hub id in the local HF cache].")
@click.option("--rope-interleaved", type=click.Choice(["auto", "true", "false"]), default="auto", show_default=True,
              help="Export (Nanotron source): how the source was trained (auto: model_config.json; a missing key means "
                   "interleaved for LlamaConfig). Nanotron output: write q/k for interleaved RoPE (auto: as the source; "
                   "a reshard reads the source by its own config unless that lacks the key).")
@click.option("--max-shard-size", type=positive_size, default="5GB", show_default=True, help="HF output: largest safetensors shard.")
@click.option("--tp", type=click.IntRange(1), default=None, help="Nanotron output (implies --to nanotron): tensor-parallel size [default: 1].")
@click.option("--pp", type=click.IntRange(1), default=None, help="Nanotron output (implies --to nanotron): pipeline-parallel size [default: 1].")
@click.option("--make-vocab-size-divisible-by", type=click.IntRange(1), default=None,
              help="Nanotron output (implies --to nanotron): pad vocab to a multiple of this x TP [default: 1].")
@click.option("--hf-arch", type=click.Choice(HF_CLASSES), default=None,
              help="HF output: the transformers class [default: the first that holds the model exactly: "
                   "Llama, then Qwen2 (q/k/v bias, sliding window), SmolLM3 (NoPE layers), Qwen2Moe (MoE)].")
@click.option("--nanotron-config", type=click.Choice(["qwen2", "llama"]), default=None,
              help="Nanotron output (implies --to nanotron): Qwen2Config (what Nanotron builds by default) or LlamaConfig (older Nanotron) "
                   "[default: a Nanotron source keeps its class; HF Llama -> llama, other families -> qwen2].")
@click.option("--workers", type=click.IntRange(1), default=None, help="Files written in parallel [default: min(4, cores)].")
@click.option("--buffered-io", is_flag=True, help="Write through the page cache instead of O_DIRECT.")
@click.option("--force", is_flag=True, help="Replace DST if it exists.")
@click.option("--wait", is_flag=True, help="If another conversion is writing DST, wait for it instead of refusing.")
@click.option("--dry-run", is_flag=True, help="Print the plan and write nothing.")
@json_option("a machine-readable report")
@click.option("--strict", is_flag=True, help="NaN or inf in the weights is an error, not a warning.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def convert(src, dst, to, dtype, fp8_scale, backend, device, staging_budget, vocab_size, tokenizer, rope_interleaved, max_shard_size, tp, pp,
            make_vocab_size_divisible_by, hf_arch, nanotron_config, workers, buffered_io, force, wait, dry_run, json_path, strict, quiet, debug):
    """Convert checkpoint SRC into DST (written beside DST, renamed into place when complete).

    SRC is a Nanotron checkpoints_path (with latest.txt) or step folder, in any TP x PP layout,
    or a HF folder (LlamaForCausalLM, Qwen2ForCausalLM, SmolLM3ForCausalLM, Qwen2MoeForCausalLM). Under torchrun (or srun with torch.distributed's
    environment) the output files are spread over the processes; the result is the same bytes.
    One conversion at a time writes DST (a lock file DST.lock beside it): another one refuses,
    or waits with --wait. An interrupted run (Ctrl-C, SIGTERM, kill) keeps its finished files;
    the same command resumes from them.

    \b
    --to: hf for a Nanotron SRC, nanotron for a HF SRC; --to nanotron alone writes TP1 PP1.
    --tp, --pp, --make-vocab-size-divisible-by and --nanotron-config describe Nanotron output:
    any of them means --to nanotron (a Nanotron SRC is resharded).
    """
    no_blas_threads()
    json_stdout(json_path)
    import contextlib

    nanotron_only = [o for o, v in (("--tp", tp), ("--pp", pp), ("--make-vocab-size-divisible-by", make_vocab_size_divisible_by),
                                    ("--nanotron-config", nanotron_config)) if v is not None]
    if nanotron_only and to == "hf":
        raise click.UsageError(f"{', '.join(nanotron_only)} describe(s) Nanotron output: drop it or use --to nanotron")
    if nanotron_only:
        to = "nanotron"
    make_vocab_size_divisible_by = make_vocab_size_divisible_by or 1

    from nanokern.execute.distributed import world

    lead = world()[0] == 0  # under torchrun only rank 0 talks
    say = click.echo if lead else (lambda *a, **k: None)
    warn = warn_line if lead else (lambda msg: None)

    def go():
        if not dry_run:
            from nanokern.convert import check_inputs_apart

            check_inputs_apart(src, dst, tokenizer)  # before the lock file or anything else is written
        with contextlib.ExitStack() as held:
            if not dry_run and lead and Path(dst).absolute().parent.is_dir():  # refuse (or wait) before planning
                from nanokern.execute import lock

                held.enter_context(lock.hold(dst, wait=wait, on_wait=lambda m: say(m, err=True)))
            if not dry_run:
                from nanokern.execute.replace import check_target

                check_target(Path(dst), force)
            return convert_locked()

    def convert_locked():
        from nanokern.convert import make_plan
        from nanokern.execute import execute, phases
        from nanokern.plan import describe

        tok, tok_line = (tokenizer, None) if tokenizer is not None else _default_tokenizer(src, to)
        with phases.span("plan"):  # (NANOKERN_PHASES only: bench convert's breakdown)
            plan = make_plan(src, to, dtype, vocab_size=vocab_size, tokenizer=tok, rope_interleaved=rope_interleaved,
                             max_shard_size=max_shard_size, tp=tp, pp=pp, make_vocab_size_divisible_by=make_vocab_size_divisible_by,
                             hf_arch=hf_arch, nanotron_config=nanotron_config, fp8_scale=fp8_scale)
        for w in plan.warnings:
            warn(w)
        info = {"ok": True, "source": src, "source_format": plan.source.origin, "target": plan.target, "dst": dst,
                "files": [f.path for f in plan.files], "tensors": plan.num_tensors, "bytes": plan.nbytes,
                "tokenizer": tok, "warnings": plan.warnings, **plan.summary}
        if dry_run:
            if tok_line:
                say(tok_line, err=True)
            say(describe(plan))
            if lead:
                write_json(json_path, {**info, "dry_run": True})
            return
        report = execute(plan, dst, backend=backend, device=device, workers=workers, force=force,
                         progress=not quiet, strict=strict, direct_io=not buffered_io, wait=wait,
                         staging_bytes=parse_size(staging_budget) if device == "cuda" else None)
        for n in report.nonfinite:
            warn(f"non-finite values (NaN/inf) in {n}")
        if not lead:
            return
        if tok_line:  # (after the output is in place: a failure stays one line)
            say(tok_line, err=True)
        procs = f", {report.processes} processes" if report.processes > 1 else ""
        say(f"wrote {dst}: {report.files} file(s), {report.tensors} tensor(s), {human_bytes(report.bytes)} "
            f"in {report.seconds:.2f} s ({report.gbps:.2f} GB/s, backend {report.backend}, {report.workers} worker(s){procs})")
        write_json(json_path, {**info, "seconds": report.seconds, "gbps": report.gbps, "backend": report.backend,
                                "workers": report.workers, "processes": report.processes,
                                "reused_files": report.reused_files, "nonfinite": report.nonfinite})
        if report.processes == 1:
            QUICK_EXIT.append(True)

    run_guarded(json_path, debug, go)


def _default_tokenizer(src, to) -> tuple[str | None, str | None]:
    """No --tokenizer, Nanotron -> HF: the tokenizer the checkpoint's config.yaml names (a local
    folder, or a hub id in the local HF cache), and the one line that says which, or that there
    is none and how to add one."""
    from nanokern.formats import nanotron
    from nanokern.formats.tokenizer import of_checkpoint

    if to not in (None, "hf") or not nanotron.is_nanotron(Path(src)):
        return None, None
    folder, why = of_checkpoint(src)
    if folder is None:
        return None, f"tokenizer: {why}: the HF folder has none; add one with --tokenizer DIR"
    return str(folder), f"tokenizer: {why}"
