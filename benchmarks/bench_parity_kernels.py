"""Bandwidth of the parity forward's Triton kernels (RMSNorm, RoPE, SwiGLU) against a
device-to-device copy of the same bytes (torch copy_), measured in the same run on the same GPU.

GB/s counts bytes read plus bytes written by the kernel (small tables such as the RMSNorm weight
and the RoPE cos/sin tables are left out: they stay in L2). The copy baseline moves the same
total: copy_ of (read + written) / 2 bytes, which reads and writes that many. ratio = kernel
GB/s / copy GB/s. Targets: RMSNorm >= 0.75, RoPE >= 0.75, SwiGLU >= 0.85.

Shapes: 16k tokens of a LLaMA-3-70B-like layer in bf16 (hidden 8192, 64 q heads + 8 kv heads of
dim 128, intermediate 28672). Appends rows to benchmarks/results/parity_kernels.csv.

    python benchmarks/bench_parity_kernels.py              # CUDA; prints a skip message on CPU
    python benchmarks/bench_parity_kernels.py --smoke      # tiny shapes, any device (interpreter
                                                           # on CPU), checks results, no CSV
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSV_PATH = os.path.join(ROOT, "benchmarks", "results", "parity_kernels.csv")
CSV_FIELDS = ["timestamp", "machine", "device", "commit", "kernel", "shape", "dtype", "bytes", "median_ms",
              "gbps", "copy_gbps", "ratio", "target", "meets_target"]
TARGETS = {"rms_norm": 0.75, "rope": 0.75, "swiglu": 0.85}


def time_ms(torch, fn, warmup: int, reps: int) -> float:
    """Median milliseconds per call (CUDA events around each call; wall clock on CPU)."""
    import time

    for _ in range(warmup):
        fn()
    times = []
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
    else:
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def cases(smoke: bool):
    if smoke:
        return {"tokens": 64, "hidden": 64, "nq": 4, "nkv": 2, "d": 16, "inter": 160, "seq": 32}
    return {"tokens": 16384, "hidden": 8192, "nq": 64, "nkv": 8, "d": 128, "inter": 28672, "seq": 4096}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes on any device; checks results; no CSV")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--no-csv", action="store_true")
    args = p.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("bench_parity_kernels: no CUDA device; skipping (bandwidth is measured on a GPU; "
              "use --smoke to exercise the script on CPU)")
        return 0
    from nanokern.bench.common import append_csv_rows, commit, machine
    from nanokern.ops import _triton
    from nanokern.ops.rms_norm import rms_norm_ref
    from nanokern.ops.rope import rope_ref, rope_tables
    from nanokern.ops.swiglu import swiglu_ref

    T = {name: _triton.kernels(name) for name in ("rms_norm", "rope", "swiglu")}  # the launchers (no op dispatch)
    dev = torch.device("cuda" if cuda else "cpu")
    c = cases(args.smoke)
    dt = torch.bfloat16
    reps, warmup = (2, 1) if args.smoke else (args.reps, args.warmup)
    g = torch.Generator(device=dev).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=dev, dtype=torch.float32).to(dt)

    n, H = c["tokens"], c["hidden"]
    nq, nkv, d, inter = c["nq"], c["nkv"], c["d"], c["inter"]
    x, w = randn(n, H), randn(H)
    rn_out = torch.empty_like(x)
    qkv = randn(n, (nq + 2 * nkv) * d)
    pos = torch.arange(c["seq"], device=dev).repeat(n // c["seq"])
    cos, sin = rope_tables(c["seq"], d, 500000.0, dt, dev)
    rope_out = torch.empty(n, nq + nkv, d, dtype=dt, device=dev)
    gu = randn(n, 2 * inter)
    sw_out = torch.empty(n, inter, dtype=dt, device=dev)
    es = 2  # bf16 bytes

    runs = [
        ("rms_norm", f"{n}x{H}", 2 * n * H * es, lambda: T["rms_norm"].rms_norm(x, w, 1e-5, out=rn_out)),
        ("rope", f"{n}x({nq}+{nkv})x{d} half-split", 2 * n * (nq + nkv) * d * es,
         lambda: T["rope"].rope(qkv, pos, cos, sin, nq + nkv, d, False, out=rope_out)),
        ("rope", f"{n}x({nq}+{nkv})x{d} interleaved", 2 * n * (nq + nkv) * d * es,
         lambda: T["rope"].rope(qkv, pos, cos, sin, nq + nkv, d, True, out=rope_out)),
        ("swiglu", f"{n}x2*{inter}", 3 * n * inter * es, lambda: T["swiglu"].swiglu(gu, out=sw_out)),
    ]
    if args.smoke:  # the timed calls compute the right thing
        runs[0][3]()
        assert torch.equal(rn_out, rms_norm_ref(x, w, 1e-5))
        runs[1][3]()
        assert torch.equal(rope_out, rope_ref(qkv, pos, cos, sin, nq + nkv, d, False))
        runs[3][3]()
        assert torch.equal(sw_out, swiglu_ref(gu))

    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    mach, rev = machine(), commit()
    device = torch.cuda.get_device_name() if cuda else "cpu (Triton interpreter)"
    print(f"bench_parity_kernels: {device}, commit {rev}, bf16, median of {reps}")
    print(f"{'kernel':9s} {'shape':34s} {'MB':>8s} {'ms':>8s} {'GB/s':>8s} {'copy GB/s':>10s} {'ratio':>6s} {'target':>7s}")
    rows = []
    for kernel, shape, nbytes, fn in runs:
        half = nbytes // 2
        src = torch.empty(half, dtype=torch.uint8, device=dev)
        dst = torch.empty_like(src)
        ms = time_ms(torch, fn, warmup, reps)
        copy_ms = time_ms(torch, lambda: dst.copy_(src), warmup, reps)
        del src, dst
        gbps, copy_gbps = nbytes / ms / 1e6, nbytes / copy_ms / 1e6
        ratio = gbps / copy_gbps
        target = TARGETS[kernel]
        ok = ratio >= target
        print(f"{kernel:9s} {shape:34s} {nbytes / 1e6:8.1f} {ms:8.3f} {gbps:8.1f} {copy_gbps:10.1f} {ratio:6.2f} "
              f"{target:7.2f}  {'ok' if ok else 'BELOW TARGET'}")
        rows.append({"timestamp": stamp, "machine": mach, "device": device, "commit": rev, "kernel": kernel,
                     "shape": shape, "dtype": "bf16", "bytes": nbytes, "median_ms": round(ms, 5),
                     "gbps": round(gbps, 2), "copy_gbps": round(copy_gbps, 2), "ratio": round(ratio, 4),
                     "target": target, "meets_target": ok})
    if args.smoke or args.no_csv:
        return 0
    append_csv_rows(CSV_PATH, CSV_FIELDS, rows)
    print(f"appended {len(rows)} rows to {os.path.relpath(CSV_PATH, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
