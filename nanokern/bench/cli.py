"""The click group: `nanokern bench convert`, `nanokern bench backends`, `nanokern bench kernels`."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import click

from nanokern.bench.common import REPO_ROOT, parse_size, short_dtype

# torch's names too (bfloat16 = bf16, float16 = fp16, float32 = fp32)
SRC_DTYPES = click.Choice(["fp32", "bf16", "fp16", "float32", "bfloat16", "float16"])
OUT_DTYPES = click.Choice(["keep", "fp32", "bf16", "fp16", "float32", "bfloat16", "float16"])


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def bench():
    """Benchmarks: conversions against the cp+sync floor and a naive script, backends against each other, kernels."""


@bench.command("convert")
@click.option("--size", default="1GB", show_default=True, help="Synthetic checkpoint size (20MB, 1GB, 4GB, ...).")
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
def convert_cmd(size, tp, pp, dtype, to, source, out_tp, out_pp, out_dtype, arch_name, reps, workers, backend, nproc, device, threads, cache_dir, scratch_dir,
                csv_path, no_csv, check, clean_cache, settle, keep_outputs, json_path):
    """Time nanokern's conversion against `cp -r` + sync of the same files and a naive
    load/cat/save_file script; peak anonymous memory against the largest tensor. nanokern and
    the naive script are timed in-process and as whole processes (exec to exit, then sync).

    \b
    export:  --to hf                                 (Nanotron --tp x --pp -> HF)
    import:  --to nanotron --from hf                 (HF -> Nanotron --tp x --pp)
    reshard: --to nanotron --out-tp 1 --out-pp 1     (Nanotron --tp x --pp -> --out-tp x --out-pp)
    """
    parse_size(size)
    from nanokern.bench.harness import Options

    opts = Options(size, tp, pp, short_dtype(dtype), to, short_dtype(out_dtype), reps, workers, backend, nproc, device,
                   threads, cache_dir, scratch_dir, csv_path, check, keep_outputs, clean_cache, settle, source, out_tp, out_pp,
                   arch_name)
    from nanokern.bench.harness import run_convert_bench
    from nanokern.bench.report import append_csv, format_table

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
@click.option("--dtype", type=SRC_DTYPES, default="fp32", show_default=True, help="Source dtype.")
@click.option("--out-dtype", type=OUT_DTYPES, default="bf16", show_default=True)
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
    rows = run_backend_bench(size, tp, pp, short_dtype(dtype), short_dtype(out_dtype), names, reps, device, threads, settle, cache_dir, scratch_dir,
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


def _register_generate() -> None:
    from nanokern.bench.generate import generate_cmd

    bench.add_command(generate_cmd, "generate")


_register_generate()


def _register_live() -> None:
    from nanokern.bench.live import live_cmd

    bench.add_command(live_cmd, "live")


_register_live()
