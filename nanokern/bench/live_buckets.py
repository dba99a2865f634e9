"""`nanokern bench live --mode buckets`: from a job's shards in memory (TP x PP ranks,
live.load_rank, untimed) into an inference engine's memory (one more rank, the last: a tensor
per HF name, allocated once, as a loaded model holds them), under torchrun. Timed on the engine,
from a barrier of every rank to its last tensor in place, in one run (paths: live_paths.py):

- floor: the transport alone, hf_buckets' own pattern with nothing converted: the same
  handshake, every unit routed to grid rank 0 by the same collectives in the same order, and
  each bucket's size in bytes broadcast to the engine over the update group (grid rank 0 + the
  engine) when its last tensor is reached, one send in flight while the next units come;
- buckets: live.hf_buckets to grid rank 0 into buffers kept across reps (live.BucketBuffers,
  as a job pushing every few steps keeps them), each bucket broadcast the same way (its fields, then
  its bytes), unpacked on the engine (CRC32 checked) and copied into place by name;
- per_tensor: live.hf_weights to grid rank 0, each tensor broadcast straight into place (the
  names, shapes and dtypes sent once ahead, from live.hf_metadata, untimed);
- two_step: every rank saves its shards in Nanotron's layout, `nanokern convert` of them (every
  rank of the world, the engine's too), the engine reads the HF folder into place;
- vllm_full, vllm_local: live.vllm_source's two passes, each rank's tensors or chunks sent to
  the engine (live_vllm.py), when vLLM's weight-transfer API imports on the grid's ranks (as
  installed, or from the folder NANOKERN_VLLM_PATH names); else one line says why they are
  skipped;
Figures: seconds, GB/s of HF bytes, floor seconds / seconds (1.0: as fast as the transport
alone); and the CPU seconds of every rank together (process time, threads included: a figure
that contention on a shared machine inflates far less), the floor's over each path's. The
engine's tensors after the first rep of each path are compared with two_step's (nanokern
convert's output; BLAKE2b of each tensor's bytes).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from nanokern.bench.common import MB, device_name, stamp

COLUMNS = ["size", "tp", "pp", "dtype", "out_dtype", "bucket_mb", "path", "seconds", "gb_per_s", "floor_s", "floor_ratio",
           "cpu_s", "cpu_floor_ratio", "hf_mb", "identical", "load1"]


def run(size: str, tp: int, pp: int, dtype: str, out_dtype: str, reps: int, device: str, cache_dir, scratch_dir,
        bucket_bytes: int, echo) -> list[dict]:
    """Launch TP x PP + 1 torchrun workers; a row per path (medians over reps)."""
    from nanokern.bench.common import default_cache_dir, parse_size
    from nanokern.bench.live_ranks import launch, private_scratch
    from nanokern.bench.synthetic import cached_checkpoint

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    ckpt, _ = cached_checkpoint(cache, parse_size(size), tp, pp, dtype, echo)
    load1 = round(os.getloadavg()[0], 2)  # (the machine's 1-minute load average as the run starts)
    with private_scratch(scratch_dir, cache) as scratch:
        spec = scratch / "spec.json"
        spec.write_text(json.dumps({"ckpt": str(ckpt), "tp": tp, "pp": pp, "out_dtype": out_dtype, "reps": reps,
                                    "device": device, "bucket_bytes": bucket_bytes, "scratch": str(scratch)}))
        res = launch(tp * pp + 1, "nanokern.bench.live_buckets", spec)
    if res.get("vllm_skipped"):
        echo(f"vllm_full, vllm_local skipped: {res['vllm_skipped']}")
    med = {k: statistics.median(v) for k, v in res["times"].items()}
    cpu = {k: statistics.median(v) for k, v in res["cpu"].items()}
    base = {**stamp(device_name(device), reps), "size": size, "tp": tp, "pp": pp, "dtype": dtype, "out_dtype": out_dtype,
            "bucket_mb": round(bucket_bytes / MB, 2), "load1": load1, "floor_s": round(med["floor"], 4), "hf_mb": round(res["hf_bytes"] / MB, 2)}
    return [{**base, "path": k, "seconds": round(s, 4), "gb_per_s": round(res["hf_bytes"] / s / 1e9, 3),
             "floor_ratio": round(med["floor"] / s, 3), "cpu_s": round(cpu[k], 4),
             "cpu_floor_ratio": round(cpu["floor"] / cpu[k], 3), "identical": res["identical"].get(k, "")} for k, s in med.items()]


# ---- the torchrun side ------------------------------------------------------------------------

def worker(spec_path: str) -> None:
    import torch
    import torch.distributed as dist

    from nanokern import live
    from nanokern.bench import live_vllm
    from nanokern.bench.live_paths import HOOKS, PATHS, two_step
    from nanokern.bench.live_ranks import join
    from nanokern.live.buckets import layout

    spec, cuda, tpg, ppg = join(spec_path)
    tps, pps, rank = spec["tp"], spec["pp"], dist.get_rank()
    engine = tps * pps
    update = dist.new_group([0, engine])
    dev = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    c = SimpleNamespace(sh=None, tpg=tpg, ppg=ppg, update=update, od=spec["out_dtype"], bucket_bytes=spec["bucket_bytes"],
                        meta=None, model=None, device=dev, ckpt=spec["ckpt"], tps=tps, pps=pps)
    if rank < engine:
        c.sh = live.load_rank(spec["ckpt"], rank % tps, rank // tps, device=dev)
        c.meta = live.hf_metadata(c.sh, tpg, ppg, c.od)
    if rank in (0, engine):  # (untimed) what an engine knows ahead: the names, shapes and dtypes
        box = [c.meta]
        dist.broadcast_object_list(box, src=0, group=update)
        c.meta = box[0]
        tensors = [SimpleNamespace(nbytes=torch.Size(s).numel() * dt.itemsize, dtype=SimpleNamespace(torch=dt)) for _, s, dt in c.meta]
        c.sizes = [g[-1][1] + g[-1][0].nbytes for g in layout(tensors, c.bucket_bytes)]
        c.buf = torch.zeros(max(c.sizes), dtype=torch.uint8, device=dev)
        c.bufs = [c.buf, torch.zeros_like(c.buf)] if rank == 0 else None  # (rank 0's two floor buffers)
        dist.broadcast(c.buf[:1], src=0, group=update)  # (the update group's connection opened)
    if rank == engine:
        c.model = {n: torch.zeros(s, dtype=dt, device=dev) for n, s, dt in c.meta}
    elif rank < engine:
        for _ in live.hf_weights(c.sh, tpg, ppg, c.od, ranks=0):
            pass  # warm-up: the grid's connections opened (nothing goes to the engine)
    c.kept = live.BucketBuffers()
    why = [None] * dist.get_world_size()  # (untimed) can the grid's ranks import vLLM's weight-transfer API?
    dist.all_gather_object(why, live_vllm.find() if rank < engine else None)
    skipped = next((w for w in why if w), None)
    if skipped is None:
        live_vllm.prepare(c, engine)
        HOOKS.update(live_vllm.PATHS)
    paths = {**PATHS, **HOOKS}
    times: dict[str, list[float]] = {k: [] for k in [*paths, "two_step"]}
    cpu: dict[str, list[float]] = {k: [] for k in times}  # this process's CPU seconds (its threads too)
    digests: dict[str, dict] = {}
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    scratch = Path(spec["scratch"])
    for rep in range(spec["reps"]):
        for name in [*paths, "two_step"]:
            if c.model is not None:
                for t in c.model.values():
                    t.zero_()
            sync()
            dist.barrier()
            t0, c0 = time.perf_counter(), time.process_time()
            if name == "two_step":
                two_step(c, rank % tps, rank // tps, scratch / f"nt-{rep}", scratch / f"hf-{rep}")
            else:
                paths[name][0 if rank < engine else 1](c)
            sync()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            if rank == engine and rep == 0 and name != "floor":
                digests[name] = {n: _digest(t) for n, t in c.model.items()}
            dist.barrier()
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, cpu)
    if rank == engine:
        first = digests["two_step"]  # (nanokern convert's output: the reference)
        (Path(spec_path).parent / "result.json").write_text(json.dumps({
            "times": times, "cpu": {k: [sum(r[k][i] for r in every) for i in range(len(v))] for k, v in cpu.items()},
            "hf_bytes": sum(t.numel() * t.element_size() for t in c.model.values()),
            "identical": {k: d == first and sorted(d) == sorted(n for n, *_ in c.meta) for k, d in digests.items()},
            "vllm_skipped": skipped}))
    dist.barrier()
    dist.destroy_process_group()


def _digest(t) -> str:
    import hashlib

    import torch

    return hashlib.blake2b(t.contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes(), digest_size=16).hexdigest()


def print_rows(rows: list[dict], echo) -> None:
    echo(f"{'path':<12} {'seconds':>9} {'GB/s':>8} {'floor/s':>8} {'CPU s':>8} {'floor/CPU':>9}  identical")
    for r in rows:
        echo(f"{r['path']:<12} {r['seconds']:>9.4f} {r['gb_per_s']:>8.3f} {r['floor_ratio']:>8.3f} {r['cpu_s']:>8.3f} "
             f"{r['cpu_floor_ratio']:>9.3f}  {r['identical']}")
    echo(",".join(COLUMNS))
    for r in rows:
        echo(",".join(str(r[k]) for k in COLUMNS))


if __name__ == "__main__":
    worker(sys.argv[1])
