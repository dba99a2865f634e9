"""The `nanokern` command line."""

from __future__ import annotations

import os
import sys

import click

from nanokern import __version__
from nanokern.execute import signals
from nanokern.cli_report import Fail, json_option, json_stdout, run_guarded, write_json
from nanokern.convert_cli import BACKEND_CHOICE, QUICK_EXIT, convert, no_blas_threads
from nanokern.errors import NanokernError

if os.path.basename(sys.argv[0]) == "nanokern" or sys.argv[0].endswith(os.path.join("nanokern", "__main__.py")):
    signals.install()  # the command itself (not an import of this module): a Ctrl-C from here on is one line

# Start-up: this module imports only click and nanokern's small modules. torch, transformers,
# triton and the parity and bench packages are imported where a command uses them (the bench
# and parity groups are loaded when their name is looked up), so every --help is quick.


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


cli.add_command(convert)


@cli.command()
@click.argument("ckpt", type=click.Path())
@click.option("--rope-interleaved", type=click.Choice(["auto", "true", "false"]), default="auto", show_default=True)
@json_option("the facts")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def inspect(ckpt, rope_interleaved, json_path, debug):
    """Layout, config, dtypes, parameter count and what a conversion would do."""
    no_blas_threads()
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
    no_blas_threads()
    json_stdout(json_path)
    from nanokern.verify import verify as run_verify

    rep = run_guarded(json_path, debug, lambda: run_verify(path, against))
    for n in rep.notes:
        click.echo(f"note: {n}")
    for p in rep.problems:
        click.echo(f"problem: {p}", err=True)
    what = f"equal to {against}" if against else "well-formed and finite"
    count = f"{rep.checksummed} file(s) checksummed" if rep.only_checksums else f"{rep.tensors} tensor(s) checked"
    if rep.only_checksums:
        what = "unchanged since written"
    click.echo(f"{path}: {count}: " + (what if rep.ok else f"{len(rep.problems)} problem(s)"))
    write_json(json_path, {"ok": rep.ok, "path": path, "against": against, "tensors": rep.tensors,
                            "problems": rep.problems, "notes": rep.notes})
    sys.exit(0 if rep.ok else 1)


@cli.command()
@click.option("--workdir", type=click.Path(file_okay=False), default=None, help="Keep the demo's files here (default: a temporary folder).")
@click.option("--backend", type=BACKEND_CHOICE, default="auto", show_default=True)
@click.option("--arch", "arch_name", type=click.Choice(["llama", "qwen2", "smollm3", "moe"]), default="llama", show_default=True,
              help="qwen2: q/k/v bias + sliding window; smollm3: NoPE layers; moe: Qwen2-MoE with a shared expert.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def demo(workdir, backend, arch_name, debug):
    """Build a tiny model in Nanotron layout (TP=2, PP=2), convert it to HF, load it with
    transformers and check parity. Works offline."""
    from nanokern.demo import run_demo

    ok = run_guarded(None, debug, lambda: run_demo(workdir, backend, arch_name))
    sys.exit(0 if ok else 1)


def main():
    signals.install()  # (again, for callers of main()): a Ctrl-C while importing torch is one line too
    from nanokern.execute import distributed

    try:
        cli(prog_name="nanokern")
    except SystemExit as e:
        distributed.close()  # every rank is past its last collective (a failure is shared first)
        if QUICK_EXIT and e.code in (0, None):
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
