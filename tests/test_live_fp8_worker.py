"""The torchrun side of tests/test_live_fp8.py (gloo, CPU): every case's checks with dtype="fp8".

Each case names a checkpoint, its TP x PP grid and its `convert --dtype fp8 [--fp8-scale]`
exports (one per scale format). Every rank of the grid checks: hf_metadata names the export's
tensors; hf_weights yields them in that order (each FP8 weight then its weight_scale_inv) with the
export's bytes; hf_buckets unpacked gives the same; one destination rank alone yields; save_hf's
folder equals convert's; after the shards double, the FP8 values are the same bits and every
scale doubles (exact: a power-of-two factor moves through amax, 448 / amax and 1 / scale, and the
ue8m0 rounding, unchanged otherwise). Failures are printed one per line ("FAIL ..."); exit 1 if any.
No test functions here: pytest collects nothing from this file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from test_live_worker import check, check_buckets, reference, run_cases, same, tree

from nanokern import live


def run_case(case: dict, tpg, ppg, out: Path) -> None:
    fx, rank = case["fixture"], dist.get_rank()
    sh = live.load_rank(fx, dist.get_rank(tpg), dist.get_rank(ppg))
    for scale, ref_dir in case["refs"].items():
        what = f"{Path(fx).name} fp8/{scale}"
        opts = {"fp8_scale": scale}
        want = reference(ref_dir)
        quantized = [n for n, t in want.items() if t.dtype == torch.float8_e4m3fn]
        check(bool(quantized) == case["quantized"], f"{what}: the export quantizes {len(quantized)} tensors")
        meta = live.hf_metadata(sh, tpg, ppg, "fp8", **opts)
        names = [n for n, *_ in meta]
        check(sorted(names) == sorted(want), f"{what}: hf_metadata names differ from the export's")
        check(all(names[names.index(n) + 1] == n.removesuffix("weight") + "weight_scale_inv" for n in quantized),
              f"{what}: a weight_scale_inv does not follow its weight")
        got = list(live.hf_weights(sh, tpg, ppg, "fp8", **opts))
        check([n for n, _ in got] == names, f"{what}: hf_weights order is not hf_metadata's")
        for (n, t), (_, shape, dt) in zip(got, meta):
            check(tuple(t.shape) == shape and t.dtype == dt, f"{what}: {n} is {t.dtype} {tuple(t.shape)}, metadata {dt} {shape}")
            check(n in want and same(t, want[n]), f"{what}: {n} differs from the convert export")
        del got
        check_buckets(live.hf_buckets, sh, tpg, ppg, "fp8", opts, meta, want, what, "all")
        if case.get("dst") is not None:
            got = list(live.hf_weights(sh, tpg, ppg, "fp8", ranks=case["dst"], **opts))
            check(len(got) == (len(want) if rank == case["dst"] else 0), f"{what}: ranks={case['dst']} yielded {len(got)} on {rank}")
            check(all(same(t, want[n]) for n, t in got), f"{what}: ranks={case['dst']}: some tensors differ")
            del got
        dst = out / f"save-{scale}"
        live.save_hf(sh, dst, tpg, ppg, "fp8", **opts)
        if rank == 0:
            a, b = tree(dst), tree(Path(ref_dir))
            check(a == b, f"{what}: save_hf's folder differs from convert's: {sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))}")
    if case["quantized"]:  # the shards move: FP8 values the same, scales doubled (scale formats alike)
        scale, ref_dir = next(iter(case["refs"].items()))
        want = reference(ref_dir)
        for p in sh.params.values():
            p.tensor.mul_(2)
        for n, t in live.hf_weights(sh, tpg, ppg, "fp8", fp8_scale=scale):
            w = want[n]
            twice = w if w.dtype == torch.float8_e4m3fn else (w.float() * 2).to(w.dtype)
            check(same(t, twice), f"{Path(fx).name}: {n} after the shards doubled: stale or wrong")


def main() -> None:
    dist.init_process_group("gloo")
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(spec["out"])
    run_cases(spec["cases"], lambda i, case, tpg, ppg: run_case(case, tpg, ppg, out / str(i)), "live fp8")

if __name__ == "__main__":
    main()
