"""The click group: `nanokern bench convert`, `nanokern bench backends`, `nanokern bench kernels`."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import click

from nanokern.bench.common import REPO_ROOT, parse_size
from nanokern.bench.harness import Options, append_csv, format_table, run_convert_bench


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def bench():
    """Benchmarks: conversions against the cp+sync floor and a naive script, backends against each other, kernels."""


@bench.command("convert")
@click.option("--size", default="1GB", show_default=True, help="Synthetic checkpoint size (20MB, 1GB, 4GB, ...).")
@click.option("--tp", type=click.IntRange(1), default=2, show_default=True)
@click.option("--pp", type=click.IntRange(1), default=2, show_default=True)
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True, help="Source dtype.")
@click.option("--to", "to", type=click.Choice(["hf"]), default="hf", show_default=True)
@click.option("--out-dtype", type=click.Choice(["keep", "fp32", "bf16", "fp16"]), default="keep", show_default=True)
@click.option("--reps", type=click.IntRange(1), default=3, show_default=True)
@click.option("--workers", type=int, default=None, help="nanokern's --workers [default: its own].")
@click.option("--backend", type=click.Choice(["auto", "torch", "cpu", "cuda", "triton"]), default="auto", show_default=True)
@click.option("--nproc", type=click.IntRange(1), default=1, show_default=True, help="> 1: torchrun --nproc-per-node N -m nanokern convert.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="torch / OpenMP threads per process (pinned).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Synthetic checkpoints [default: .bench-cache/ at the repo root].")
@click.option("--scratch-dir", type=click.Path(file_okay=False), default=None, help="Outputs [default: inside the cache dir, same filesystem].")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="Append the row here [default: benchmarks/results/convert.csv].")
@click.option("--no-csv", is_flag=True, help="Do not append a CSV row.")
@click.option("--check/--no-check", default=True, show_default=True, help="Compare nanokern's and the naive outputs bit for bit.")
@click.option("--clean-cache", is_flag=True, help="Delete this size's synthetic checkpoint afterwards.")
@click.option("--settle", type=click.FloatRange(0), default=8.0, show_default=True,
              help="Idle seconds before each measured run, so all start from the same memory state.")
@click.option("--keep-outputs", type=click.Path(file_okay=False), default=None, hidden=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the full result as JSON.")
def convert_cmd(size, tp, pp, dtype, to, out_dtype, reps, workers, backend, nproc, device, threads, cache_dir, scratch_dir,
                csv_path, no_csv, check, clean_cache, settle, keep_outputs, json_path):
    """Time nanokern's conversion against `cp -r` + sync of the same files and a naive
    load/cat/save_file script; peak anonymous memory against the largest tensor."""
    parse_size(size)
    opts = Options(size, tp, pp, dtype, to, out_dtype, reps, workers, backend, nproc, device, threads, cache_dir,
                   scratch_dir, csv_path, check, keep_outputs, clean_cache, settle)
    res = run_convert_bench(opts)
    click.echo(format_table(res))
    if not no_csv:
        path = Path(csv_path) if csv_path else REPO_ROOT / "benchmarks" / "results" / "convert.csv"
        append_csv(path, res.row)
        click.echo(f"appended a row to {path}")
    if json_path:
        Path(json_path).write_text(json.dumps({**asdict(res), "table": format_table(res)}, indent=2, default=str) + "\n")
    if res.identical is False:
        raise click.ClickException("nanokern and naive outputs differ")


@bench.command("backends")
@click.option("--size", default="1GB", show_default=True, help="Synthetic checkpoint size (20MB, 1GB, 4GB, ...).")
@click.option("--tp", type=click.IntRange(1), default=2, show_default=True)
@click.option("--pp", type=click.IntRange(1), default=2, show_default=True)
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True, help="Source dtype.")
@click.option("--out-dtype", type=click.Choice(["keep", "fp32", "bf16", "fp16"]), default="bf16", show_default=True)
@click.option("--backends", default="cpu,torch", show_default=True, help="Comma-separated backends to compare.")
@click.option("--rope-interleaved", is_flag=True, help="Read the source as trained with interleaved RoPE: q/k rows are permuted (row-map gathers).")
@click.option("--reps", type=click.IntRange(1), default=5, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="torch / OpenMP threads per process.")
@click.option("--settle", type=click.FloatRange(0), default=8.0, show_default=True, help="Idle seconds before each run.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Synthetic checkpoints [default: .bench-cache/].")
@click.option("--scratch-dir", type=click.Path(file_okay=False), default=None,
              help="Where outputs go [default: the cache dir]; a tmpfs here takes the disk out of the comparison.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="Append rows here [default: benchmarks/results/backends.csv].")
@click.option("--no-csv", is_flag=True, help="Do not append CSV rows.")
def backends_cmd(size, tp, pp, dtype, out_dtype, backends, rope_interleaved, reps, device, threads, settle, cache_dir, scratch_dir,
                 csv_path, no_csv):
    """Time the same conversion with each gather_cast backend (order rotating each rep, outputs
    checked identical): medians, and torch's median over each backend's."""
    from nanokern.bench.backends import append_rows, format_rows, run_backend_bench

    parse_size(size)
    names = [b.strip() for b in backends.split(",") if b.strip()]
    if not names:
        raise click.BadParameter("name at least one backend", param_hint="--backends")
    rows = run_backend_bench(size, tp, pp, dtype, out_dtype, names, reps, device, threads, settle, cache_dir, scratch_dir,
                             click.echo, rope_interleaved)
    click.echo(format_rows(rows))
    if not no_csv:
        path = Path(csv_path) if csv_path else REPO_ROOT / "benchmarks" / "results" / "backends.csv"
        append_rows(path, rows)
        click.echo(f"appended {len(rows)} rows to {path}")


@bench.command("kernels", add_help_option=False, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def kernels_cmd(args):
    """Kernel micro-benchmarks: runs benchmarks/bench_kernels.py with ARGS (--help: its options)."""
    script = REPO_ROOT / "benchmarks" / "bench_kernels.py"
    if not script.is_file():
        raise click.ClickException(f"{script} does not exist")
    sys.exit(subprocess.call([sys.executable, str(script), *args]))
