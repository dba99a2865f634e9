"""`bench convert`: floor, nanokern and naive runs, medians, the table and the CSV row."""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click

from nanokern.bench.common import CSV_COLUMNS, ITEMSIZE, MB, REPO_ROOT, append_csv_rows, commit, device_name, machine, parse_size
from nanokern.bench.measure import Run, _rm, _run_measured, _torchrun_supported
from nanokern.bench.naive import compare_hf
from nanokern.bench.synthetic import cached_checkpoint


@dataclass
class Options:
    size: str = "1GB"
    tp: int = 2
    pp: int = 2
    dtype: str = "fp32"
    to: str = "hf"
    out_dtype: str = "keep"
    reps: int = 3
    workers: int | None = None
    backend: str = "auto"
    nproc: int = 1
    device: str = "cpu"
    threads: int = 1
    cache_dir: str | None = None
    scratch_dir: str | None = None
    csv_path: str | None = None  # "" disables the CSV row
    check: bool = True
    keep_outputs: str | None = None  # copy the last nanokern/naive outputs here (tests)
    clean_cache: bool = False
    settle: float = 8.0  # idle seconds before each measured run (see measure())


@dataclass
class Result:
    options: dict
    shape: dict
    source_bytes: int
    largest_tensor: str
    largest_tensor_bytes: int
    runs: dict[str, list[Run]] = field(default_factory=dict)
    identical: bool | None = None
    problems: list[str] = field(default_factory=list)
    row: dict = field(default_factory=dict)
    load_before: str = ""

    def median(self, approach: str) -> float:
        return statistics.median(r.seconds for r in self.runs[approach])

    def peak(self, approach: str) -> int:
        return max(r.peak_anon for r in self.runs[approach])

    def baseline(self, approach: str) -> int:
        return int(statistics.median(r.baseline_anon for r in self.runs[approach]))


def run_convert_bench(opts: Options, echo=click.echo) -> Result:
    nbytes = parse_size(opts.size)
    if opts.to != "hf":
        raise click.BadParameter("only --to hf is measured (the naive baseline is a Nanotron -> HF script)")
    if opts.nproc > 1 and not _torchrun_supported():
        raise click.ClickException("--nproc > 1: this nanokern has no torchrun support yet (nothing reads "
                                   "WORLD_SIZE / calls init_process_group); rerun with --nproc 1")
    cache = Path(opts.cache_dir) if opts.cache_dir else REPO_ROOT / ".bench-cache"
    src, shape = cached_checkpoint(cache, nbytes, opts.tp, opts.pp, opts.dtype, echo)
    step = src / "0"
    source_bytes = sum(f.stat().st_size for f in (step / "model").rglob("*.safetensors"))
    big_name, big_numel = shape.largest_tensor()
    out_isz = ITEMSIZE[opts.out_dtype] if opts.out_dtype != "keep" else ITEMSIZE[opts.dtype]
    big_bytes = big_numel * max(ITEMSIZE[opts.dtype], out_isz)
    res = Result(asdict(opts), asdict(shape), source_bytes, big_name, big_bytes)
    res.load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())

    scratch_parent = Path(opts.scratch_dir) if opts.scratch_dir else cache
    scratch_parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="scratch-", dir=scratch_parent))
    env = {**os.environ, "OMP_NUM_THREADS": str(opts.threads), "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    outs = {"floor": scratch / "floor", "nanokern": scratch / "nanokern", "naive": scratch / "naive"}

    def spec(approach: str) -> list[str]:
        f = scratch / f"{approach}.json"
        f.write_text(json.dumps({"approach": approach, "src": str(src), "dst": str(outs.get(approach, scratch / "idle")),
                                 "to": opts.to, "out_dtype": opts.out_dtype, "backend": opts.backend, "device": opts.device,
                                 "workers": opts.workers, "threads": opts.threads, "result": str(scratch / f"{approach}.result.json")}))
        return [sys.executable, "-m", "nanokern.bench", "_worker", str(f)]

    def measure(approach: str) -> Run:
        _rm(outs[approach])
        # Same memory state for every approach: on VMs with free page reporting (virtio-balloon
        # page_reporting, as on the dev machines) memory freed by the previous run's `rm` goes
        # back to the host within seconds, and touching it again costs ~1.3 s of page faults
        # per GB. Without this pause `cp` (starting in milliseconds) would reuse still-backed
        # pages while the Python workers (seconds of imports) would pay for fresh ones.
        time.sleep(opts.settle)
        if approach == "floor":
            return _run_measured(["cp", "-r", str(step / "model"), str(outs["floor"])], env)
        if approach == "naive" or opts.nproc == 1:
            return _run_measured(spec(approach), env, scratch / f"{approach}.result.json")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(opts.nproc),
               "-m", "nanokern", "convert", str(src), str(outs["nanokern"]), "--to", opts.to, "--dtype", opts.out_dtype,
               "--backend", opts.backend, "--device", opts.device, "--force", "-q"]
        if opts.workers:
            cmd += ["--workers", str(opts.workers)]
        run = _run_measured(cmd, env)
        run.baseline_anon = idle_baseline
        return run

    idle_baseline = 0
    if opts.nproc > 1:  # the launcher tree's import baseline, measured the same way
        idle = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(opts.nproc),
                *spec("idle")[1:]]
        idle_baseline = _run_measured(idle, env).peak_anon

    echo(f"source {src.name}: {shape.layers} layer(s), hidden {shape.hidden}, intermediate {shape.intermediate}, "
         f"vocab {shape.vocab}, {source_bytes / 1e9:.3f} GB; largest tensor {big_name} {big_bytes / MB:.1f} MB")
    approaches = ["floor", "nanokern", "naive"]
    try:
        for rep in range(opts.reps):
            order = approaches if rep % 2 == 0 else approaches[::-1]
            for a in order:
                r = measure(a)
                res.runs.setdefault(a, []).append(r)
                echo(f"  rep {rep + 1}/{opts.reps} {a:9s} {r.seconds:7.2f} s  cpu {r.cpu:6.2f} s  peak anon {r.peak_anon / MB:8.1f} MB")
                if a == "floor" or rep < opts.reps - 1 or (not opts.check and not opts.keep_outputs):
                    _rm(outs[a])
        if opts.check:
            res.problems = compare_hf(outs["nanokern"], outs["naive"])
            res.identical = not res.problems
        if opts.keep_outputs:
            keep = Path(opts.keep_outputs)
            keep.mkdir(parents=True, exist_ok=True)
            for a in ("nanokern", "naive"):
                shutil.rmtree(keep / a, ignore_errors=True)
                shutil.move(str(outs[a]), str(keep / a))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if opts.clean_cache:
            shutil.rmtree(src, ignore_errors=True)

    floor, nk, naive = (res.median(a) for a in approaches)
    peak, base = res.peak("nanokern"), res.baseline("nanokern")
    res.row = {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(), "device": device_name(opts.device), "commit": commit(), "size": opts.size,
        "tp": opts.tp, "pp": opts.pp, "dtype": opts.dtype, "out_dtype": opts.out_dtype,
        "workers": opts.workers if opts.workers else "auto", "backend": opts.backend, "nproc": opts.nproc,
        "floor_s": round(floor, 3), "nanokern_s": round(nk, 3), "naive_s": round(naive, 3),
        "ratio_floor": round(nk / floor, 3), "speedup_naive": round(naive / nk, 3),
        "peak_anon_mb": round(peak / MB, 1), "baseline_anon_mb": round(base / MB, 1),
        "largest_tensor_mb": round(big_bytes / MB, 1), "mem_ratio": round((peak - base) / big_bytes, 3),
    }
    return res


def format_table(res: Result) -> str:
    o = res.options
    floor = res.median("floor")
    naive = res.median("naive")
    lines = [f"nanokern bench convert: {o['size']} {o['dtype']} TP{o['tp']}xPP{o['pp']} -> {o['to']} ({o['out_dtype']}), "
             f"{o['reps']} rep(s), medians; {machine()}",
             f"{'approach':<10} {'time s':>8} {'GB/s':>7} {'x floor':>8} {'vs naive':>9} {'cpu s':>7} {'peak anon MB':>13} {'(peak-base)/largest':>20}"]
    for a, label in (("floor", "cp+sync"), ("nanokern", "nanokern"), ("naive", "naive")):
        t = res.median(a)
        peak = res.peak(a)
        if a == "floor":
            mem = "-"
        else:
            mem = f"{(peak - res.baseline(a)) / res.largest_tensor_bytes:.2f}"
        cpu = statistics.median(r.cpu for r in res.runs[a])
        lines.append(f"{label:<10} {t:8.2f} {res.source_bytes / t / 1e9:7.2f} {t / floor:8.2f} {naive / t:8.2f}x "
                     f"{cpu:7.2f} {peak / MB:13.1f} {mem:>20}")
    lines.append(f"baseline anon after imports: nanokern {res.baseline('nanokern') / MB:.1f} MB, naive {res.baseline('naive') / MB:.1f} MB; "
                 f"largest tensor {res.largest_tensor} {res.largest_tensor_bytes / MB:.1f} MB; GB/s = source GB / time; "
                 f"cpu = user+sys of the process (kernel writeback not included); load average before: {res.load_before}")
    if res.identical is not None:
        lines.append("nanokern output == naive output, tensor for tensor, bit-exact: "
                     + ("yes" if res.identical else f"NO ({len(res.problems)}): " + "; ".join(res.problems[:5])))
    r = res.row
    verdict = lambda ok: "ok" if ok else "MISSED"  # noqa: E731
    lines.append(f"targets: nanokern <= 1.3x floor: {r['ratio_floor']:.2f} {verdict(r['ratio_floor'] <= 1.3)}; "
                 f">= 2x faster than naive: {r['speedup_naive']:.2f} {verdict(r['speedup_naive'] >= 2)}; "
                 f"(peak - baseline) <= 2x largest tensor: {r['mem_ratio']:.2f} {verdict(r['mem_ratio'] <= 2)}")
    return "\n".join(lines)


def append_csv(path: Path, row: dict) -> None:
    append_csv_rows(path, CSV_COLUMNS, [row])
