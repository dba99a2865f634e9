"""`nanokern watch`: the click command (registered lazily by nanokern/cli.py)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import click

from nanokern.arch import BY_CLASS
from nanokern.io import dtypes, units
from nanokern.ops.backends import BACKENDS


@click.command("watch")
@click.argument("checkpoints_path", required=False, type=click.Path(file_okay=False))
@click.argument("out_root", required=False, type=click.Path(file_okay=False))
@click.option("--status", "status_root", type=click.Path(exists=True, file_okay=False), default=None, metavar="OUT_ROOT",
              help="Print the table of OUT_ROOT's steps (exported, seconds, GB/s, parity, exec) and write a plot "
                   "of export time and parity error over the steps; watch nothing.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="--status: where to write the plot [default: OUT_ROOT/nanokern-watch.png].")
@click.option("--once", is_flag=True, help="Export the steps complete now and exit: 0 if all succeeded, 1 if any "
                                           "failed, a --check marked one suspect or an --exec command exited non-zero.")
@click.option("--every", type=click.IntRange(1), default=None, metavar="N", help="Only steps divisible by N.")
@click.option("--keep-last", type=click.IntRange(1), default=None, metavar="K",
              help="Keep the K newest exports this watch made and remove its older ones (never a source, never a "
                   "folder the watch did not make, as its log records).")
@click.option("--latest-only", is_flag=True, help="When several steps are ready, export only the newest; never "
                                                  "go back to a step older than the newest export.")
@click.option("--poll", type=click.FloatRange(0.05), default=30.0, show_default=True, metavar="SECONDS",
              help="Seconds between looks at CHECKPOINTS_PATH (plain polling: works on network filesystems). "
                   "A step is exported once it is complete and unchanged for one poll.")
@click.option("--give-up", type=click.FloatRange(0), default=900.0, show_default=True, metavar="SECONDS",
              help="A step incomplete and unchanged for this long is recorded failed, naming the file.")
@click.option("--check", type=click.Choice(["parity"]), default=None,
              help="After each export: the parity check (native forward over the step's shards vs transformers on "
                   "the export, in the exported dtype: bf16 or fp32). Figures go to the log and "
                   "OUT_ROOT/<step>/nanokern-parity.json; a failure marks the step suspect and keeps the export.")
@click.option("--exec", "exec_cmd", default=None, metavar="CMD",
              help="Shell command run after each export (and check), e.g. an sbatch of an evaluation or an upload: "
                   "{step} and {out} are replaced, already shell-quoted: write {out} bare, never inside quotes "
                   "(\"at {out}\" would run a $(...) in a folder name), or use \"$NANOKERN_OUT\". NANOKERN_STEP, "
                   "NANOKERN_OUT, NANOKERN_SOURCE and NANOKERN_CHECK (passed, suspect, or empty) are in its "
                   "environment. Its exit code is logged; with --once a non-zero one fails the run (exit 1).")
@click.option("--dtype", type=click.Choice(dtypes.choices(keep=True)), default=None,
              help="As convert: output dtype [default: bf16]; fp8: 128x128-block FP8 exports.")
@click.option("--fp8-scale", type=click.Choice(["float", "ue8m0"]), default="float", show_default=True,
              help="As convert: --dtype fp8's block scales (ue8m0: powers of two).")
@click.option("--tokenizer", type=click.Path(exists=True, file_okay=False), default=None, help="As convert: copy this tokenizer into each export.")
@click.option("--vocab-size", type=int, default=None, help="As convert: true vocabulary size (trims padded rows).")
@click.option("--max-shard-size", type=units.positive_size, default="5GB", show_default=True, help="As convert: largest safetensors shard.")
@click.option("--hf-arch", type=click.Choice(list(BY_CLASS)), default=None, help="As convert: the transformers class [default: the first that holds the model].")
@click.option("--workers", type=click.IntRange(1), default=None, help="As convert: files written in parallel.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True, help="As convert (and where the check runs).")
@click.option("--backend", type=click.Choice(["auto", *BACKENDS]), default="auto", show_default=True,
              help="As convert: gather_cast implementation (all give the same bytes).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def watch(checkpoints_path, out_root, status_root, plot_path, once, every, keep_last, latest_only, poll, give_up, check,
          exec_cmd, dtype, fp8_scale, tokenizer, vocab_size, max_shard_size, hf_arch, workers, device, backend, quiet, debug):
    """Export every complete step CHECKPOINTS_PATH/<step>/ of a Nanotron run to OUT_ROOT/<step>/
    (the same bytes as `nanokern convert CHECKPOINTS_PATH/<step> OUT_ROOT/<step>`), oldest first,
    while training writes more. Start it once beside training (a second process, or a Slurm
    sidecar) and leave it.

    \b
    A step is exported once complete on disk (model_config.json, Nanotron's last file, and
    config.yaml parse; every shard the slice metadata implies is there, as long as its header
    says) and unchanged for one poll; never while being written. Each export is convert's:
    atomic, resumable, locked. OUT_ROOT/nanokern-watch.jsonl logs every event (started,
    exported, failed, superseded, checked, exec, removed); OUT_ROOT/latest links to the newest
    export. A step saved again after its export (other weights under the same name) is exported
    again; the old export is kept beside it as <step>.superseded-<N>.
    Stopped or killed at any moment, the same command goes on where it was. A second watch on
    the same OUT_ROOT refuses, naming the holder. Under torchrun rank 0 picks the step and every
    rank takes part in its export.

    \b
    nanokern watch CHECKPOINTS_PATH OUT_ROOT [--every N] [--keep-last K] [--check parity] [--exec CMD]
    nanokern watch CHECKPOINTS_PATH OUT_ROOT --once
    nanokern watch --status OUT_ROOT
    """
    from nanokern.cli_report import run_guarded

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if status_root is not None:
        if checkpoints_path or out_root:
            raise click.UsageError("--status takes OUT_ROOT alone")
        run_guarded(None, debug, lambda: _status(Path(status_root), plot_path))
        return
    if not (checkpoints_path and out_root):
        raise click.UsageError("give CHECKPOINTS_PATH and OUT_ROOT (or --status OUT_ROOT)")
    if fp8_scale != "float" and not dtypes.is_fp8(dtype):
        raise click.UsageError(f"--fp8-scale {fp8_scale} describes FP8 exports: add --dtype fp8")
    from nanokern.execute import signals
    from nanokern.execute.distributed import world
    from nanokern.watch.export import ExportOptions
    from nanokern.watch.loop import run
    from nanokern.watch.watcher import WatchOptions

    lead = world()[0] == 0
    say = (lambda m, err=False: click.echo(m, err=err)) if lead else (lambda m, err=False: None)
    o = WatchOptions(Path(checkpoints_path), Path(out_root),
                     ExportOptions(dtype, tokenizer, vocab_size, max_shard_size, hf_arch, workers, device, backend,
                                   progress=not quiet and lead, fp8_scale=fp8_scale),
                     every, keep_last, once, poll, latest_only, check, exec_cmd, give_up)
    try:
        rc = run_guarded(None, debug, lambda: run(o, say))
    except signals.Interrupted as e:
        if lead:
            name = signal.Signals(e.signum).name
            after = f" after {e.finished} was put in place" if e.finished else ""
            line = e.message() if e.kept is not None else \
                f"interrupted ({name}){after}: the watch stopped; the same command goes on where it was"
            click.echo(line, err=True)
        from nanokern.execute import distributed

        if distributed.owned():  # a peer may be inside a collective: leave without tearing gloo down
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(e.exit_code)
        sys.exit(e.exit_code)
    sys.exit(rc)


def _status(root: Path, plot_path) -> None:
    from nanokern.watch import status

    _echo(status.table(root))
    where = status.plot(root, Path(plot_path) if plot_path else root / "nanokern-watch.png")
    if where:
        _echo(f"plot: {where}")


def _echo(text: str) -> None:
    """A line on stdout; once its reader has gone (`| head -1`), the rest quietly to /dev/null."""
    try:
        click.echo(text)
        sys.stdout.flush()
    except BrokenPipeError:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())  # Python's own flush at exit finds no pipe to fail on
        os.close(null)
