"""The `nanokern` command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from nanokern import __version__
from nanokern.execute import signals
from nanokern.arch import BY_CLASS
from nanokern.cli_report import Fail, json_option, json_stdout, run_guarded, warn_line, write_json
from nanokern.errors import NanokernError
from nanokern.io.units import human_bytes
from nanokern.io import dtypes

if os.path.basename(sys.argv[0]) == "nanokern" or sys.argv[0].endswith(os.path.join("nanokern", "__main__.py")):
    signals.install()  # the command itself (not an import of this module): a Ctrl-C from here on is one line

# Start-up: this module imports only click and nanokern's small modules. torch, transformers,
# triton and the parity and bench packages are imported where a command uses them (the bench
# and parity groups are loaded when their name is looked up), so every --help is quick.

DTYPES = click.Choice([*(d.short for d in dtypes.FLOATS), "keep", *(d.name for d in dtypes.FLOATS)])  # torch's names too
BACKENDS = click.Choice(["auto", "torch", "cpu", "cuda", "triton"])
HF_CLASSES = list(BY_CLASS)


def _no_blas_threads() -> None:
    """For the commands that never call BLAS (convert, inspect, verify), before numpy is imported:
    numpy's OpenBLAS otherwise starts a thread per core at import, which spin for a while; on
    a 2-core machine that took about 0.1 s of CPU from a conversion, and 30-50 ms of its
    start-up. A value the user set wins."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _load_parity():
    from nanokern.parity_cli import parity

    return parity


def _load_bench():
    from nanokern.bench.cli import bench

    return bench


def _load_generate():
    from nanokern.generate.cli import generate

    return generate


def _load_watch():
    from nanokern.watch.cli import watch

    return watch


LAZY = {"bench": _load_bench, "parity": _load_parity, "generate": _load_generate, "watch": _load_watch}


class _Group(click.Group):
    """Any NanokernError a command lets through, and any usage error click finds, ends as one
    `error:` line, exit code 1. The LAZY commands are loaded when looked up."""

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *LAZY})

    def get_command(self, ctx, name):
        if name in LAZY and name not in self.commands:
            self.add_command(LAZY[name](), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except NanokernError as e:
            raise Fail(str(e)) from None
        except click.UsageError as e:  # click's own (missing argument, bad value, no such command): the same style
            raise _usage_fail(e) from None

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:
            raise _usage_fail(e) from None


def _usage_fail(e: click.UsageError) -> Fail:
    """A usage error as every other error: one `error:` line (naming where the help is), exit 1."""
    if isinstance(e, click.exceptions.NoArgsIsHelpError):  # `nanokern bench` alone: its help, as before
        return e
    where = f"; see '{e.ctx.command_path} --help'" if e.ctx is not None else ""
    return Fail(e.format_message().rstrip(".") + where)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="nanokern")
def cli():
    """Move weights of every model family Nanotron trains (LLaMA; Qwen2Config: q/k/v bias,
    SmolLM3 NoPE layers, sliding window, MoE) between Nanotron's TP x PP training layout and
    HuggingFace transformers, with fused kernels, and prove each conversion with a parity check.

    \b
    nanokern convert CKPT OUT                            Nanotron -> HF (any TP x PP layout)
    nanokern convert HF OUT --to nanotron --tp 2 --pp 2  HF -> Nanotron TP2 PP2
    nanokern inspect CKPT                                what is in a checkpoint, what a conversion would do
    nanokern parity CKPT                                 native-layout forward vs transformers, layer by layer
    nanokern generate CKPT --prompt-ids 1,2              decode straight from the training layout (KV cache)
    nanokern demo                                        the whole loop on a tiny built-in model
    """


@cli.command()
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option("--to", "to", type=click.Choice(["hf", "nanotron"]), help="Target format [default: the other one].")
@click.option("--dtype", type=DTYPES, default=None, help="Output dtype, round-to-nearest-even [default: bf16 for HF, keep for Nanotron].")
@click.option("--backend", type=BACKENDS, default="auto", show_default=True, help="gather_cast implementation (all give the same bytes).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cuda: gather and cast on the GPU (LOCAL_RANK's GPU under torchrun), staged through pinned buffers.")
@click.option("--staging-budget", default="1GB", show_default=True, help="--device cuda: pinned + device staging memory.")
@click.option("--vocab-size", type=int, default=None, help="True vocabulary size: trims Nanotron's padded rows.")
@click.option("--tokenizer", type=click.Path(exists=True, file_okay=False), default=None,
              help="Copy this tokenizer into a HF output [default: the one config.yaml's tokenizer_name_or_path names, "
                   "a folder or a hub id in the local HF cache].")
@click.option("--rope-interleaved", type=click.Choice(["auto", "true", "false"]), default="auto", show_default=True,
              help="Export (Nanotron source): how the source was trained (auto: model_config.json; a missing key means "
                   "interleaved for LlamaConfig). Nanotron output: write q/k for interleaved RoPE (auto: as the source; "
                   "a reshard reads the source by its own config unless that lacks the key).")
@click.option("--max-shard-size", default="5GB", show_default=True, help="HF output: largest safetensors shard.")
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
@click.option("--workers", type=int, default=None, help="Files written in parallel [default: min(4, cores)].")
@click.option("--buffered-io", is_flag=True, help="Write through the page cache instead of O_DIRECT.")
@click.option("--force", is_flag=True, help="Replace DST if it exists.")
@click.option("--wait", is_flag=True, help="If another conversion is writing DST, wait for it instead of refusing.")
@click.option("--dry-run", is_flag=True, help="Print the plan and write nothing.")
@json_option("a machine-readable report")
@click.option("--strict", is_flag=True, help="NaN or inf in the weights is an error, not a warning.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def convert(src, dst, to, dtype, backend, device, staging_budget, vocab_size, tokenizer, rope_interleaved, max_shard_size, tp, pp,
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
    _no_blas_threads()
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
        from nanokern.formats.hf import parse_size
        from nanokern.plan import describe

        tok, tok_line = (tokenizer, None) if tokenizer is not None else _default_tokenizer(src, to)
        with phases.span("plan"):  # (NANOKERN_PHASES only: bench convert's breakdown)
            plan = make_plan(src, to, dtype, vocab_size=vocab_size, tokenizer=tok, rope_interleaved=rope_interleaved,
                             max_shard_size=max_shard_size, tp=tp, pp=pp, make_vocab_size_divisible_by=make_vocab_size_divisible_by,
                             hf_arch=hf_arch, nanotron_config=nanotron_config)
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
            _QUICK_EXIT.append(True)

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


@cli.command()
@click.argument("ckpt", type=click.Path())
@click.option("--rope-interleaved", type=click.Choice(["auto", "true", "false"]), default="auto", show_default=True)
@json_option("the facts")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def inspect(ckpt, rope_interleaved, json_path, debug):
    """Layout, config, dtypes, parameter count and what a conversion would do."""
    _no_blas_threads()
    json_stdout(json_path)
    from nanokern.inspect import inspect_checkpoint

    def go():
        text, facts = inspect_checkpoint(ckpt, rope_interleaved)
        click.echo(text)
        write_json(json_path, facts)

    run_guarded(json_path, debug, go)


@cli.command()
@click.argument("path", type=click.Path())
@click.option("--against", type=click.Path(), default=None, help="Compare every tensor with this checkpoint (any layout).")
@json_option("the report")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def verify(path, against, json_path, debug):
    """Audit a Nanotron or HF checkpoint: structure, shapes, shard coverage, finiteness; with
    --against, tensor-by-tensor equality of two checkpoints in any layouts. Exit 0 only when
    all holds."""
    _no_blas_threads()
    json_stdout(json_path)
    from nanokern.verify import verify as run_verify

    rep = run_guarded(json_path, debug, lambda: run_verify(path, against))
    for n in rep.notes:
        click.echo(f"note: {n}")
    for p in rep.problems:
        click.echo(f"problem: {p}", err=True)
    what = f"equal to {against}" if against else "well-formed and finite"
    click.echo(f"{path}: {rep.tensors} tensor(s) checked: " + (what if rep.ok else f"{len(rep.problems)} problem(s)"))
    write_json(json_path, {"ok": rep.ok, "path": path, "against": against, "tensors": rep.tensors,
                            "problems": rep.problems, "notes": rep.notes})
    sys.exit(0 if rep.ok else 1)


@cli.command()
@click.option("--workdir", type=click.Path(file_okay=False), default=None, help="Keep the demo's files here (default: a temporary folder).")
@click.option("--backend", type=BACKENDS, default="auto", show_default=True)
@click.option("--arch", "arch_name", type=click.Choice(["llama", "qwen2", "smollm3", "moe"]), default="llama", show_default=True,
              help="qwen2: q/k/v bias + sliding window; smollm3: NoPE layers; moe: Qwen2-MoE with a shared expert.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def demo(workdir, backend, arch_name, debug):
    """Build a tiny model in Nanotron layout (TP=2, PP=2), convert it to HF, load it with
    transformers and check parity. Works offline."""
    from nanokern.demo import run_demo

    ok = run_guarded(None, debug, lambda: run_demo(workdir, backend, arch_name))
    sys.exit(0 if ok else 1)


_QUICK_EXIT = []  # set by a command whose work is complete and durable: skip the interpreter's teardown


def main():
    signals.install()  # (again, for callers of main()): a Ctrl-C while importing torch is one line too
    from nanokern.execute import distributed

    try:
        cli(prog_name="nanokern")
    except SystemExit as e:
        distributed.close()  # every rank is past its last collective (a failure is shared first)
        if _QUICK_EXIT and e.code in (0, None):
            # The output is complete and durable, the report printed: tearing down the modules
            # (torch's, where a backend imported it) costs the user's wait and nothing else.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        raise
    except signals.Interrupted as e:
        if distributed.world()[0] == 0:
            click.echo(f"\n{e.message()}" if sys.stderr.isatty() else e.message(), err=True)
        if distributed.owned():  # a peer may be inside a collective: leave without tearing gloo down
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(e.exit_code)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
