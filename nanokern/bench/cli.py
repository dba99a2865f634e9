"""The click group: `nanokern bench convert`, `nanokern bench backends`, `nanokern bench kernels`."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import click

from nanokern.bench.common import REPO_ROOT, parse_size, short_dtype
from nanokern.io import dtypes
from nanokern.ops.backends import BACKENDS
from nanokern.cli_report import json_option, json_stdout, write_json

# torch's names too (bfloat16 = bf16, float16 = fp16, float32 = fp32)
SRC_DTYPES = click.Choice(dtypes.choices(keep=False))
OUT_DTYPES = click.Choice(dtypes.choices(keep=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def bench():
    """Benchmarks: conversions against the cp+sync floor and a naive script, backends against each other, kernels."""


def _size(ctx, param, value):
    if value is not None and parse_size(value) <= 0:
        raise click.BadParameter(f"{value!r}: the checkpoint needs a size above 0 (20MB, 1GB, ...)")
    return value


@bench.command("convert")
@click.option("--size", default="1GB", show_default=True, callback=_size, help="Synthetic checkpoint size (20MB, 1GB, 4GB, ...).")
@click.option("--tp", type=click.IntRange(1), default=2, show_default=True)
@click.option("--pp", type=click.IntRange(1), default=2, show_default=True)
@click.option("--dtype", type=SRC_DTYPES, default="fp32", show_default=True, help="Source dtype.")
@click.option("--to", "to", type=click.Choice(["hf", "nanotron"]), default="hf", show_default=True,
              help="hf: export. nanotron: import (--from hf) or reshard (--from nanotron).")
@click.option("--from", "source", type=click.Choice(["nanotron", "hf"]), default="nanotron", show_default=True,
              help="Source format; hf = the synthetic checkpoint exported once by nanokern (cached).")
@click.option("--out-tp", type=click.IntRange(1), default=1, show_default=True, help="Reshard: target TP (import: --tp).")
@click.option("--out-pp", type=click.IntRange(1), default=1, show_default=True, help="Reshard: target PP (import: --pp).")
@click.option("--out-dtype", type=OUT_DTYPES, default="keep", show_default=True)
@click.option("--arch", "arch_name", type=click.Choice(["llama", "qwen2", "smollm3", "moe"]), default="llama", show_default=True,
              help="Synthetic family: qwen2 = q/k/v bias + window, smollm3 = NoPE layers, moe = Qwen2-MoE (8 experts, "
                   "shared expert). The naive baseline exists for llama only; the others are checked against the source.")
@click.option("--reps", type=click.IntRange(1), default=3, show_default=True)
@click.option("--workers", type=click.IntRange(1), default=None, help="nanokern's --workers [default: its own].")
@click.option("--backend", type=click.Choice(["auto", *BACKENDS]), default="auto", show_default=True)
@click.option("--nproc", type=click.IntRange(1), default=1, show_default=True, help="> 1: torchrun --nproc-per-node N -m nanokern convert.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="torch / OpenMP threads per process (pinned).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Synthetic checkpoints, kept between runs [default: nanokern-bench-cache/ in the temporary folder, "
                   "$TMPDIR or /tmp]. The outputs go beside them: put it on the disk to measure.")
@click.option("--scratch-dir", type=click.Path(file_okay=False), default=None,
              help="Outputs, removed at the end and on Ctrl-C [default: inside the cache dir, same filesystem].")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="Append the row to this CSV (e.g. benchmarks/results/convert.csv) [default: no CSV].")
@click.option("--no-csv", is_flag=True, hidden=True)  # (the default now; kept for old scripts)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG of the medians (and the whole process's phases) here.")
@click.option("--check/--no-check", default=True, show_default=True, help="Compare nanokern's and the naive outputs bit for bit.")
@click.option("--clean-cache", is_flag=True, help="Delete this size's synthetic checkpoint afterwards.")
@click.option("--settle", type=click.FloatRange(0), default=8.0, show_default=True,
              help="Idle seconds before each measured run, so all start from the same memory state (each is announced).")
@click.option("--keep-outputs", type=click.Path(file_okay=False), default=None, hidden=True)
@json_option("the full result")
def convert_cmd(size, tp, pp, dtype, to, source, out_tp, out_pp, out_dtype, arch_name, reps, workers, backend, nproc, device, threads, cache_dir, scratch_dir,
                csv_path, no_csv, plot_path, check, clean_cache, settle, keep_outputs, json_path):
    """Time nanokern's conversion against `cp -r` + sync of the same files and a naive
    load/cat/save_file script; peak anonymous memory against the largest tensor. nanokern and
    the naive script are timed in-process and as whole processes (exec to exit, then sync).

    \b
    export:  --to hf                                 (Nanotron --tp x --pp -> HF)
    import:  --to nanotron --from hf                 (HF -> Nanotron --tp x --pp)
    reshard: --to nanotron --out-tp 1 --out-pp 1     (Nanotron --tp x --pp -> --out-tp x --out-pp)

    The table's last lines say where the whole process's time goes (start-up, plan, writing:
    read+kernel and write per worker thread, sync, rename, exit). Ctrl-C stops the run and
    removes its outputs (the cached checkpoints are kept).
    """
    json_stdout(json_path)
    from nanokern.bench.harness import Options

    opts = Options(size, tp, pp, short_dtype(dtype), to, short_dtype(out_dtype), reps, workers, backend, nproc, device,
                   threads, cache_dir, scratch_dir, csv_path, check, keep_outputs, clean_cache, settle, source, out_tp, out_pp,
                   arch_name)
    from nanokern.bench.harness import run_convert_bench
    from nanokern.bench.report import append_csv, format_table, phase_seconds, plot

    res = _interruptible(lambda: run_convert_bench(opts))
    table = format_table(res)
    click.echo(table)
    if csv_path:
        append_csv(Path(csv_path), res.row)
        click.echo(f"appended a row to {Path(csv_path).absolute()}")
    else:
        click.echo("no CSV row written (--csv PATH appends one)")
    if plot_path:
        plot(res, plot_path)
        click.echo(f"plot: {Path(plot_path).absolute()}")
    if json_path:
        phases = [phase_seconds(r) for r in res.runs.get("cli", [])]
        write_json(json_path, {**asdict(res), "phases": [p for p in phases if p], "table": table})
    if res.identical is False:
        raise click.ClickException("nanokern and naive outputs differ")


def _interruptible(fn):
    """Ctrl-C / SIGTERM while benchmarking: the child run is stopped and the scratch folder
    removed (harness.py), then one line and exit 128 + the signal number."""
    import signal

    from nanokern.execute import signals

    try:
        with signals.raising():
            return fn()
    except (signals.Interrupted, KeyboardInterrupt) as e:
        signum = getattr(e, "signum", signal.SIGINT)
        signals.leave(signum, f"interrupted ({signal.Signals(signum).name}): bench stopped; its outputs are removed "
                              "(the cached checkpoints are kept)")


@bench.command("backends")
@click.option("--size", default="1GB", show_default=True, callback=_size, help="Synthetic checkpoint size (20MB, 1GB, 4GB, ...).")
@click.option("--tp", type=click.IntRange(1), default=2, show_default=True)
@click.option("--pp", type=click.IntRange(1), default=2, show_default=True)
@click.option("--dtype", type=SRC_DTYPES, default="fp32", show_default=True, help="Source dtype.")
@click.option("--out-dtype", type=OUT_DTYPES, default="bf16", show_default=True)
@click.option("--backends", default="cpu,torch", show_default=True, help="Comma-separated backends to compare.")
@click.option("--rope-interleaved", is_flag=True, help="Read the source as trained with interleaved RoPE: q/k rows are permuted (row-map gathers).")
@click.option("--reps", type=click.IntRange(1), default=5, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="torch / OpenMP threads per process.")
@click.option("--settle", type=click.FloatRange(0), default=8.0, show_default=True, help="Idle seconds before each run.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Synthetic checkpoints [default: nanokern-bench-cache/ in the temporary folder].")
@click.option("--scratch-dir", type=click.Path(file_okay=False), default=None,
              help="Where outputs go [default: the cache dir]; a tmpfs here takes the disk out of the comparison.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="Append the rows to this CSV (e.g. benchmarks/results/backends.csv) [default: no CSV].")
@click.option("--no-csv", is_flag=True, hidden=True)  # (the default now; kept for old scripts)
def backends_cmd(size, tp, pp, dtype, out_dtype, backends, rope_interleaved, reps, device, threads, settle, cache_dir, scratch_dir,
                 csv_path, no_csv):
    """Time the same conversion with each gather_cast backend (order rotating each rep, outputs
    checked identical): medians, and torch's median over each backend's."""
    from nanokern.bench.backends import append_rows, format_rows, run_backend_bench

    parse_size(size)
    names = [b.strip() for b in backends.split(",") if b.strip()]
    if not names:
        raise click.BadParameter("name at least one backend", param_hint="--backends")
    rows = run_backend_bench(size, tp, pp, short_dtype(dtype), short_dtype(out_dtype), names, reps, device, threads, settle, cache_dir, scratch_dir,
                             click.echo, rope_interleaved)
    click.echo(format_rows(rows))
    if csv_path:
        append_rows(Path(csv_path), rows)
        click.echo(f"appended {len(rows)} rows to {Path(csv_path).absolute()}")


@bench.command("kernels", add_help_option=False, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def kernels_cmd(args):
    """Kernel micro-benchmarks: runs benchmarks/bench_kernels.py with ARGS (--help: its options)."""
    script = REPO_ROOT / "benchmarks" / "bench_kernels.py"
    if not script.is_file():
        raise click.ClickException(f"{script} does not exist")
    sys.exit(subprocess.call([sys.executable, str(script), *args]))


def _register_generate() -> None:
    from nanokern.bench.generate import generate_cmd

    bench.add_command(generate_cmd, "generate")


_register_generate()


def _register_live() -> None:
    from nanokern.bench.live import live_cmd

    bench.add_command(live_cmd, "live")


_register_live()
