"""gather_cast throughput per backend against torch's own copy_ of the same bytes, same run.
The fp8 rows time gather_quant_fp8 (128 x 128-block FP8 quantization fused into the gather, with
its scales) against torch's plain copy_ cast to float8_e4m3fn of the same bytes.

GB/s counts bytes read plus bytes written. The baseline `copy_` is torch's own cast-copy of the
same bytes into the same output view: `out.copy_(src)` (same source view) when the row map is the
identity, else `out.copy_(src_rows)` from a source gathered beforehand (no gather in the timing).
Triton on CPU runs under the interpreter, slow by design: it is timed on the first rows only
(at most INTERPRETER_BYTES), marked `*`.
Shapes are the layout moves of LLaMA-3-8B/70B-like layers (QKV split with the RoPE permutation,
TP merges into row or column ranges). Prints a table and appends rows to
benchmarks/results/kernels.csv.

    python benchmarks/bench_kernels.py --device cpu [--quick] [--threads 1]
    python benchmarks/bench_kernels.py --device cuda
"""
import argparse
import datetime
import os
import statistics
import sys
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSV_PATH = os.path.join(ROOT, "benchmarks", "results", "kernels.csv")
INTERPRETER_BYTES = 8 << 20
CSV_FIELDS = ["timestamp", "commit", "machine", "device", "threads", "case", "src_dtype",
              "dst_dtype", "out_rows", "cols", "bytes", "backend", "median_ms", "gbps",
              "copy_gbps", "ratio_to_copy", "reps", "note"]


@dataclass
class Case:
    name: str
    src_shape: tuple[int, int]  # the source tensor (a shard / fused weight)
    rows: str                   # "identity", "rope_q": q rows of a fused qkv, RoPE-permuted
    out_shape: tuple[int, int]  # the full output tensor the result lands in
    out_rows: tuple[int, int]   # row range of the output written
    out_cols: tuple[int, int]   # column range of the output written
    src_cols: tuple[int, int] | None = None  # column slice of the source, if any
    heads: tuple[int, int, int] = (0, 0, 0)  # (q heads, kv heads, head_dim) of this shard
    quick: bool = True


def cases() -> list[Case]:
    l8 = (32, 8, 128)  # LLaMA-3-8B: hidden 4096, 32 q heads, 8 kv heads, ffn 14336
    return [
        Case("8B q from fused qkv, RoPE perm, TP1", (6144, 4096), "rope_q", (4096, 4096),
             (0, 4096), (0, 4096), heads=l8),
        Case("8B gate_up shard -> up rows, TP2", (14336, 4096), "identity_tail", (14336, 4096),
             (7168, 14336), (0, 4096)),
        Case("8B down_proj shard -> col range, TP4", (4096, 3584), "identity", (4096, 14336),
             (0, 4096), (3584, 7168)),
        Case("8B embedding 128256 x 4096, TP1", (128256, 4096), "identity", (128256, 4096),
             (0, 128256), (0, 4096), quick=False),
        Case("70B q from qkv shard, RoPE perm, TP8", (1280, 8192), "rope_q", (8192, 8192),
             (1024, 2048), (0, 8192), heads=(8, 1, 128)),
        Case("70B o_proj shard -> col range, TP8", (8192, 1024), "identity", (8192, 8192),
             (0, 8192), (7168, 8192)),
        Case("70B split o_proj into TP8 shard", (8192, 8192), "identity", (8192, 1024),
             (0, 8192), (0, 1024), src_cols=(2048, 3072)),
        Case("70B up_proj rows of gate_up, TP1", (57344, 8192), "identity_tail", (28672, 8192),
             (0, 28672), (0, 8192), quick=False),
    ]


def rope_rows(torch, n_heads, head_dim, first_row):
    """Interleaved -> half-split RoPE order within each head, starting at `first_row`."""
    per_head = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    return torch.cat([first_row + h * head_dim + per_head for h in range(n_heads)])


def timed(torch, fns: dict, device: str, reps: int) -> dict:
    """Median seconds of each function over `reps` rounds after one warm-up round. Rounds run
    every function once in turn, so load on a shared machine hits all of them alike."""
    times = {name: [] for name in fns}
    for rep in range(reps + 1):
        for name, fn in fns.items():
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            if rep:
                times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def build(torch, case: Case, sdt, ddt, device: str):
    """(src view, rows or None, out view, baseline src laid out like the result)."""
    gen = torch.Generator().manual_seed(0)
    src = torch.randn(case.src_shape, generator=gen).to(sdt).to(device)
    if case.src_cols:
        src = src[:, case.src_cols[0]:case.src_cols[1]]
    n_out = case.out_rows[1] - case.out_rows[0]
    if case.rows == "rope_q":
        q_heads, _, head_dim = case.heads
        rows = rope_rows(torch, q_heads, head_dim, 0).to(device)
    elif case.rows == "identity_tail":  # second half of a fused [gate; up] weight, as a row slice
        src = src[src.size(0) - n_out:]
        rows = None
    else:
        rows = None
    out_full = torch.zeros(case.out_shape, dtype=ddt, device=device)
    out = out_full[case.out_rows[0]:case.out_rows[1], case.out_cols[0]:case.out_cols[1]]
    baseline_src = src if rows is None else src.index_select(0, rows).contiguous()
    return src, rows, out, baseline_src


def first_rows(src, rows, out, max_bytes, multiple=1):
    """The same problem cut to its first output rows (at most max_bytes read + written; a
    multiple of `multiple` rows)."""
    per_row = out.size(1) * (src.element_size() + out.element_size())
    k = max(multiple, min(out.size(0), max_bytes // per_row) // multiple * multiple)
    return (src[:k] if rows is None else src), (None if rows is None else rows[:k]), out[:k]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--quick", action="store_true", help="fewer reps, skip the largest shapes")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (CPU)")
    p.add_argument("--reps", type=int, default=None, help="timed runs per measurement")
    p.add_argument("--backends", default=None, help="comma-separated subset (default: available)")
    p.add_argument("--no-csv", action="store_true", help="do not append to " + CSV_PATH)
    args = p.parse_args(argv)

    import torch

    from nanokern.bench.common import append_csv_rows, commit, device_name, machine
    from nanokern.ops import available_backends, gather_cast
    from nanokern.ops.fp8_quant import gather_quant_fp8

    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_kernels: no CUDA device", file=sys.stderr)
        return 2
    backends = available_backends(args.device)
    if args.backends:
        wanted = args.backends.split(",")
        missing = [b for b in wanted if b not in backends]
        if missing:
            print(f"bench_kernels: not available on {args.device}: {', '.join(missing)}", file=sys.stderr)
        backends = [b for b in wanted if b in backends]
    reps = args.reps or (3 if args.quick else 7)
    mach, dev_name, rev = machine(), device_name(args.device), commit()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"bench_kernels: device={dev_name!r} machine={mach!r} threads="
          f"{torch.get_num_threads()} commit={rev} backends={','.join(backends)} reps={reps}")

    fp8 = torch.float8_e4m3fn
    dtype_pairs = [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.bfloat16), (torch.bfloat16, fp8)]
    short = {torch.float32: "fp32", torch.bfloat16: "bf16", fp8: "fp8"}

    def kernel(src, rows, out, b):
        if out.dtype != fp8:
            return lambda: gather_cast(src, rows, out, backend=b)
        scale = torch.empty(out.size(0) // 128, out.size(1) // 128, device=out.device)
        return lambda: gather_quant_fp8(src, rows, out, scale, backend=b)

    header = f"{'case':40s} {'cast':10s} {'MB':>7s} {'copy_':>7s} " + " ".join(
        f"{b:>7s} {'x':>5s}" for b in backends)
    print(header)
    print("-" * len(header))
    rows_out = []
    for case in cases():
        if args.quick and not case.quick:
            continue
        for sdt, ddt in dtype_pairs:
            src, rows, out, base_src = build(torch, case, sdt, ddt, args.device)
            nbytes = out.numel() * (src.element_size() + out.element_size())
            interp = "triton" if args.device == "cpu" and "triton" in backends else None
            fns = {"copy_": lambda: out.copy_(base_src)}
            fns.update({b: kernel(src, rows, out, b) for b in backends if b != interp})
            secs = timed(torch, fns, args.device, reps)
            if interp:  # slow by design: first rows only, fewer reps
                i_src, i_rows, i_out = first_rows(src, rows, out, INTERPRETER_BYTES, 128 if ddt == fp8 else 1)
                secs[interp] = timed(torch, {interp: kernel(i_src, i_rows, i_out, interp)}, args.device,
                                     min(reps, 2))[interp]
            copy_gbps = nbytes / secs["copy_"] / 1e9
            cells = []
            for b in backends:
                b_rows = i_out.size(0) if b == interp else out.size(0)
                b_bytes = b_rows * out.size(1) * (src.element_size() + out.element_size())
                gbps = b_bytes / secs[b] / 1e9
                cells.append(f"{gbps:7.2f}{'*' if b == interp else ' '}{gbps / copy_gbps:5.2f}")
                rows_out.append({
                    "timestamp": stamp, "commit": rev, "machine": mach, "device": dev_name,
                    "threads": torch.get_num_threads(), "case": case.name,
                    "src_dtype": short[sdt], "dst_dtype": short[ddt], "out_rows": b_rows,
                    "cols": out.size(1), "bytes": b_bytes, "backend": b,
                    "median_ms": f"{secs[b] * 1e3:.3f}", "gbps": f"{gbps:.3f}",
                    "copy_gbps": f"{copy_gbps:.3f}", "ratio_to_copy": f"{gbps / copy_gbps:.3f}",
                    "reps": min(reps, 2) if b == interp else reps,
                    "note": "triton interpreter, first rows only" if b == interp else ""})
            cast = f"{short[sdt]}>{short[ddt]}"
            print(f"{case.name:40s} {cast:10s} {nbytes / 1e6:7.1f} {copy_gbps:7.2f} " + " ".join(cells),
                  flush=True)
            del src, rows, out, base_src
    print("GB/s = (bytes read + bytes written) / median time; x = ratio to copy_ in the same run"
          + ("; * = Triton interpreter, first rows only" if "triton" in backends
             and args.device == "cpu" else ""))
    if not args.no_csv:
        append_csv_rows(CSV_PATH, CSV_FIELDS, rows_out)
        print(f"appended {len(rows_out)} rows to {os.path.relpath(CSV_PATH, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
