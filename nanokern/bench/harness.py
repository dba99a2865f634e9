"""`bench convert`: the floor, nanokern and naive runs (the row and the table: report.py).

Three directions, each against its own `cp -r` + `sync` floor of its source and its own naive
script: export (Nanotron TP x PP -> HF), import (HF -> Nanotron TP x PP; the HF source is the
synthetic checkpoint exported once by nanokern, cached) and reshard (Nanotron TP x PP ->
Nanotron --out-tp x --out-pp). nanokern is timed twice: in-process (the Python API after its
imports, as before) and as the user runs it, `nanokern convert` as a child process from exec
to exit, then `sync`; the naive script likewise (its own time, and exec to exit + sync)."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from nanokern.arch import decoder
from nanokern.bench import disk
from nanokern.bench.disk import qd1_speed
from nanokern.bench.common import (ITEMSIZE, REPO_ROOT, compile_bytecode, default_cache_dir, device_name, parse_size,
                                   short_dtype)
from nanokern.bench.measure import Run, _rm, _run_measured
from nanokern.bench.naive import compare_hf, compare_nanotron
from nanokern.bench.report import Result, convert_row, rep_line
from nanokern.io import dtypes
from nanokern.io.units import human_bytes
from nanokern.bench.synthetic import cached_checkpoint


LABELS = {"floor": "cp+sync", "nanokern": "nanokern in-process", "cli": "nanokern whole process", "naive": "naive"}


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
    source: str = "nanotron"  # with to="nanotron": "hf" = import, "nanotron" = reshard
    out_tp: int = 1  # reshard target
    out_pp: int = 1
    arch: str = "llama"  # synthetic family (bench/synthetic.py ARCHS); the naive scripts know only llama

    @property
    def direction(self) -> str:
        if self.to == "hf":
            return "export"
        return "import" if self.source == "hf" else "reshard"

    @property
    def target_layout(self) -> tuple[int, int] | None:
        """(TP, PP) of a Nanotron output."""
        return {"export": None, "import": (self.tp, self.pp), "reshard": (self.out_tp, self.out_pp)}[self.direction]


def nanokern_command() -> list[str]:
    """What the user runs: the venv's `nanokern` console script (python -m nanokern without one)."""
    script = Path(sys.executable).with_name("nanokern")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "nanokern"]


def _warm(root: Path) -> None:
    """Read every file under root once (the import source was written with O_DIRECT: not cached)."""
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with open(p, "rb", buffering=0) as f:
                while f.read(16 << 20):
                    pass


def cached_hf_source(cache: Path, nt_src: Path, echo) -> Path:
    """The HF folder of a synthetic Nanotron checkpoint (exported once by nanokern, cached)."""
    root = cache / f"hf-{nt_src.name}"
    if (root / "config.json").is_file():
        return root
    from nanokern.convert import convert

    echo(f"exporting {nt_src.name} to HF once, as the import source ...")
    tmp = cache / f"{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        convert(nt_src, tmp, to="hf", dtype="keep", progress=False)
        os.sync()
        os.replace(tmp, root)
    except BaseException:  # Ctrl-C included: no half export left in the cache
        _rm(tmp)
        raise
    return root


def run_convert_bench(opts: Options, echo=click.echo) -> Result:
    nbytes = parse_size(opts.size)
    opts.dtype, opts.out_dtype = short_dtype(opts.dtype), short_dtype(opts.out_dtype)
    direction = opts.direction
    if opts.to == "hf" and opts.source != "nanotron":
        raise click.BadParameter("--to hf: the source is a Nanotron checkpoint (--from nanotron)")
    cache = Path(opts.cache_dir) if opts.cache_dir else default_cache_dir()
    echo(f"cache of synthetic checkpoints: {cache}" + ("" if opts.cache_dir else " (--cache-dir to choose)"))
    nt_src, shape = cached_checkpoint(cache, nbytes, opts.tp, opts.pp, opts.dtype, echo, opts.arch)
    if direction == "import":
        src = cached_hf_source(cache, nt_src, echo)
        floor_src = src
        source_bytes = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    else:
        src = nt_src
        floor_src = nt_src / "0" / "model"
        source_bytes = sum(f.stat().st_size for f in floor_src.rglob("*.safetensors"))
    _warm(src)  # every approach reads a source already in the page cache
    compile_bytecode()  # as installed: no approach compiles nanokern's modules from source
    target = opts.target_layout
    big_name, big_numel = shape.largest_tensor()
    if target is not None:  # Nanotron's own tensors (fused qkv and gate_up per TP rank, merged experts)
        spec = shape.spec()
        for name, p, _i in decoder.nanotron_params(spec):
            numel = math.prod(p.nt_shape(spec)) // (1 if p.split_dim() is None else target[0])
            if numel > big_numel:
                big_name, big_numel = name.rsplit(".pp_block.", 1)[-1], numel
    fp8 = dtypes.is_fp8(opts.out_dtype)  # (the naive script has no FP8: it is not run then)
    out_isz = 1 if fp8 else ITEMSIZE[opts.out_dtype] if opts.out_dtype != "keep" else ITEMSIZE[opts.dtype]
    big_bytes = big_numel * max(ITEMSIZE[opts.dtype], out_isz)
    res = Result(asdict(opts), asdict(shape), source_bytes, big_name, big_bytes)
    res.options["direction"] = direction
    res.load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())

    scratch_parent = Path(opts.scratch_dir) if opts.scratch_dir else cache
    scratch_parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="scratch-", dir=scratch_parent))
    probe = qd1_speed(scratch)  # the output disk's own speed with one request in flight
    res.disk = asdict(probe)
    echo(f"output disk: {probe.mbps:.0f} MB/s with one {disk.BLOCK >> 20} MiB {'O_DIRECT ' if probe.direct else ''}write "
         "in flight at a time (+ fsync)")
    env = {**os.environ, "OMP_NUM_THREADS": str(opts.threads), "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    outs = {a: scratch / a for a in ("floor", "nanokern", "cli", "naive")}
    plan_options = {} if target is None else {"tp": target[0], "pp": target[1]}
    layout_args = [] if target is None else ["--tp", str(target[0]), "--pp", str(target[1])]

    def spec(approach: str) -> list[str]:
        f = scratch / f"{approach}.json"
        f.write_text(json.dumps({"approach": approach, "src": str(src), "dst": str(outs.get(approach, scratch / "idle")),
                                 "to": opts.to, "out_dtype": opts.out_dtype, "backend": opts.backend, "device": opts.device,
                                 "workers": opts.workers, "threads": opts.threads, "direction": direction,
                                 "plan_options": plan_options, "result": str(scratch / f"{approach}.result.json")}))
        return [sys.executable, "-m", "nanokern.bench", "_worker", str(f)]

    def convert_args(dst: Path) -> list[str]:
        args = ["convert", str(src), str(dst), "--to", opts.to, *layout_args, "--dtype", opts.out_dtype,
                "--backend", opts.backend, "--device", opts.device, "--force", "-q"]
        return args + (["--workers", str(opts.workers)] if opts.workers else [])

    def measure(approach: str) -> Run:
        _rm(outs[approach])
        # Same memory state for every approach: on VMs with free page reporting (virtio-balloon
        # page_reporting, as on the dev machines) memory freed by the previous run's `rm` goes
        # back to the host within seconds, and touching it again costs page faults. Without
        # this pause `cp` (starting in milliseconds) would reuse still-backed pages while the
        # Python workers (seconds of imports) would pay for fresh ones.
        if opts.settle > 0:
            echo(f"  settling {opts.settle:g} s (--settle) before the {LABELS[approach]} run ...")
            time.sleep(opts.settle)
        if approach == "floor":
            return _run_measured(["cp", "-r", str(floor_src), str(outs["floor"])], env)
        if approach == "cli":  # what the user runs and waits for: exec to exit, then sync
            if opts.nproc > 1:
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(opts.nproc),
                       "-m", "nanokern", *convert_args(outs["cli"])]
            else:
                cmd = [*nanokern_command(), *convert_args(outs["cli"])]
            return _run_measured(cmd, env, phases_file=scratch / "phases.json")
        if approach == "naive" or opts.nproc == 1:
            return _run_measured(spec(approach), env, scratch / f"{approach}.result.json")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(opts.nproc),
               "-m", "nanokern", *convert_args(outs["nanokern"])]
        run = _run_measured(cmd, env)
        run.baseline_anon = idle_baseline
        return run

    idle_baseline = 0
    echo(f"{direction}: source {src.name}: {shape.layers} layer(s), hidden {shape.hidden}, intermediate {shape.intermediate}, "
         f"vocab {shape.vocab}, {human_bytes(source_bytes)}; largest tensor {big_name} {human_bytes(big_bytes)}")
    approaches = ["floor", "nanokern", "cli"] + (["naive"] if opts.arch == "llama" and not fp8 else [])
    if opts.settle > 0:
        n = opts.reps * len(approaches)
        echo(f"each of the {n} runs starts after {opts.settle:g} s idle (--settle): about {n * opts.settle:.0f} s of settling")
    compare = compare_hf if direction == "export" else compare_nanotron
    try:
        if opts.nproc > 1:  # the launcher tree's import baseline, measured the same way
            idle = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(opts.nproc),
                    *spec("idle")[1:]]
            idle_baseline = _run_measured(idle, env).peak_anon
        for rep in range(opts.reps):
            order = approaches if rep % 2 == 0 else approaches[::-1]
            for a in order:
                r = measure(a)
                res.runs.setdefault(a, []).append(r)
                echo(rep_line(rep + 1, opts.reps, a, r))
                if a == "floor" or rep < opts.reps - 1 or (not opts.check and not opts.keep_outputs):
                    _rm(outs[a])
        if opts.check and "naive" in approaches:
            res.problems = compare(outs["nanokern"], outs["naive"]) + compare(outs["cli"], outs["naive"])
            res.identical = not res.problems
        elif opts.check and fp8:  # (nanokern reads no FP8 values yet: the FP8 exports are checked by tests/test_fp8_export.py)
            echo("--out-dtype fp8: the outputs are not checked against the source (nanokern reads no FP8 values yet; verify checks only their checksums)")
        elif opts.check:  # no naive script for this family: every tensor against the source's
            from nanokern.verify import verify

            res.problems = [p for a in ("nanokern", "cli") for p in verify(outs[a], src).problems]
            res.identical = not res.problems
        if opts.keep_outputs:
            keep = Path(opts.keep_outputs)
            keep.mkdir(parents=True, exist_ok=True)
            for a in ("nanokern", "cli", "naive"):
                shutil.rmtree(keep / a, ignore_errors=True)
                shutil.move(str(outs[a]), str(keep / a))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if opts.clean_cache:
            shutil.rmtree(nt_src, ignore_errors=True)
            if direction == "import":
                shutil.rmtree(src, ignore_errors=True)

    res.row = convert_row(res, device_name(opts.device), target)
    return res
