"""`nanokern bench live`: under torchrun (TP x PP processes, gloo on CPU, NCCL with --device cuda),
from "shards in memory" (live.load_rank, untimed) to "HF folder durable on disk", three ways in
one run: live.save_hf; the two-step path (every rank saves its shards in Nanotron's layout, as
save_weights does, then `nanokern convert` of that checkpoint over the same ranks); and the
collectives alone, twice: every unit to every rank (all-gather over TP, broadcast over PP), and
each unit to the rank that writes it, as save_hf moves them (nothing cast or written). Both outputs are compared byte for byte. One CSV row; peak bytes live.* allocates and
the peak growth of anonymous RSS per rank, against the bound (2 x the largest HF tensor in the
output dtype + the largest gathered unit). Outputs go to a private folder made for the run inside
--scratch-dir (live_ranks.private_scratch), the only thing removed. --mode buckets: into an
inference engine's memory instead (live_buckets.py).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

from nanokern.bench.common import MB, append_csv_rows, default_cache_dir, device_name, parse_size, stamp
from nanokern.bench.live_ranks import join, launch, private_scratch, save_nanotron

COLUMNS = ["size", "tp", "pp", "dtype", "out_dtype", "live_s", "two_step_s", "save_nanotron_s", "convert_s",
           "collectives_s", "routed_collectives_s", "speedup_two_step", "live_over_collectives", "live_over_routed",
           "identical", "peak_alloc_mb", "bound_mb", "peak_anon_growth_mb", "largest_tensor_mb"]


def run(size: str, tp: int, pp: int, dtype: str, out_dtype: str, reps: int, device: str, cache_dir, scratch_dir, echo) -> dict:
    """Launch the torchrun workers; the row (medians over reps)."""
    from nanokern.bench.synthetic import cached_checkpoint

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    ckpt, shape = cached_checkpoint(cache, parse_size(size), tp, pp, dtype, echo)
    with private_scratch(scratch_dir, cache) as scratch:
        spec = scratch / "spec.json"
        spec.write_text(json.dumps({"ckpt": str(ckpt), "tp": tp, "pp": pp, "out_dtype": out_dtype, "reps": reps,
                                    "device": device, "scratch": str(scratch)}))
        res = launch(tp * pp, "nanokern.bench.live", spec)
    med = {k: statistics.median(v) for k, v in res["times"].items()}
    two = med["save_nanotron_s"] + med["convert_s"]
    return {**stamp(device_name(device), reps), "size": size, "tp": tp, "pp": pp, "dtype": dtype, "out_dtype": out_dtype,
            "live_s": round(med["live_s"], 4), "two_step_s": round(two, 4), "save_nanotron_s": round(med["save_nanotron_s"], 4),
            "convert_s": round(med["convert_s"], 4), "collectives_s": round(med["collectives_s"], 4),
            "routed_collectives_s": round(med["routed_s"], 4), "live_over_routed": round(med["live_s"] / med["routed_s"], 3),
            "speedup_two_step": round(two / med["live_s"], 3), "live_over_collectives": round(med["live_s"] / med["collectives_s"], 3),
            "identical": res["identical"], "peak_alloc_mb": round(res["peak_alloc"] / MB, 2), "bound_mb": round(res["bound"] / MB, 2),
            "peak_anon_growth_mb": round(res["anon_growth"] / MB, 2), "largest_tensor_mb": round(res["largest"] / MB, 2)}


def append(path, row: dict) -> None:
    append_csv_rows(path, COLUMNS, [row])


# ---- the torchrun side ------------------------------------------------------------------------

def worker(spec_path: str) -> None:
    import torch
    import torch.distributed as dist

    from nanokern import live
    from nanokern.bench.measure import AnonSampler
    from nanokern.convert import convert
    from nanokern.formats.nanotron import layout as L
    from nanokern.live.export import setup, state_dict_order
    from nanokern.live.gather import Budget
    from nanokern.live.save import writers
    from nanokern.live.stream import produce

    spec, cuda, tpg, ppg = join(spec_path)
    tps, pps = spec["tp"], spec["pp"]
    tp, pp = dist.get_rank() % tps, dist.get_rank() // tps
    sh = live.load_rank(spec["ckpt"], tp, pp, device="cuda" if cuda else "cpu")
    owner = L.pp_stage_blocks(*_spec_vocab(spec["ckpt"]), pps)
    scratch, od = Path(spec["scratch"]), spec["out_dtype"]
    sync = (lambda: torch.cuda.synchronize()) if cuda else (lambda: None)  # noqa: E731
    times: dict[str, list[float]] = {"live_s": [], "save_nanotron_s": [], "convert_s": [], "collectives_s": [], "routed_s": []}
    stats, growth = {}, 0
    s = setup(sh, tpg, ppg, dtype=od)  # warm-up (untimed): the groups' first collectives open their connections
    for _ in produce(s.lp, s.sh, s.g, state_dict_order(s.lp), lambda t: False, s.backend, s.device, Budget()):
        pass
    for rep in range(spec["reps"]):
        live_out, nt, conv_out = scratch / f"live-{rep}", scratch / f"nt-{rep}", scratch / f"convert-{rep}"
        dist.barrier()
        base = _anon()
        sampler = AnonSampler(os.getpid())
        sampler.start()
        t0 = time.perf_counter()
        live.save_hf(sh, live_out, tpg, ppg, od, stats=stats)
        dist.barrier()
        times["live_s"].append(time.perf_counter() - t0)
        growth = max(growth, sampler.stop() - base)
        t0 = time.perf_counter()
        save_nanotron(sh, nt / "0", tp, pp, tps, pps, owner)
        sync()
        dist.barrier()
        if dist.get_rank() == 0:
            (nt / "0" / "model_config.json").write_text(json.dumps(sh.config))
            (nt / "latest.txt").write_text("0")
        dist.barrier()
        t1 = time.perf_counter()
        convert(nt, conv_out, to="hf", dtype=od, device="cuda" if cuda else "cpu", progress=False)
        dist.barrier()
        t2 = time.perf_counter()
        times["save_nanotron_s"].append(t1 - t0)
        times["convert_s"].append(t2 - t1)
        s = setup(sh, tpg, ppg, dtype=od)
        t0 = time.perf_counter()
        for _ in produce(s.lp, s.sh, s.g, state_dict_order(s.lp), lambda t: False, s.backend, s.device, Budget()):
            pass  # every unit to every rank: all-gather over TP, broadcast over PP
        sync()
        dist.barrier()
        times["collectives_s"].append(time.perf_counter() - t0)
        order, dest = writers(s.lp.plan, s.g)
        t0 = time.perf_counter()
        for _ in produce(s.lp, s.sh, s.g, order, lambda t: False, s.backend, s.device, Budget(), dest=dest):
            pass  # each unit to the rank that writes it, as save_hf moves them
        sync()
        dist.barrier()
        times["routed_s"].append(time.perf_counter() - t0)
    identical = None
    if dist.get_rank() == 0:
        files = lambda d: {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}  # noqa: E731
        identical = files(scratch / "live-0") == files(scratch / "convert-0")
    per_rank = [None] * dist.get_world_size()
    dist.all_gather_object(per_rank, (stats, growth))
    if dist.get_rank() == 0:
        (scratch / "result.json").write_text(json.dumps({
            "times": times, "identical": identical, "peak_alloc": max(s["peak_bytes"] for s, _ in per_rank),
            "bound": max(s["bound_bytes"] for s, _ in per_rank), "largest": max(s["largest_tensor_bytes"] for s, _ in per_rank),
            "anon_growth": max(g for _, g in per_rank)}))
    dist.destroy_process_group()


def _spec_vocab(ckpt):
    from nanokern.formats.nanotron import read_checkpoint

    ck = read_checkpoint(ckpt)
    return ck.spec, ck.spec.vocab_size


def _anon() -> int:
    from nanokern.bench.measure import rss_anon

    return rss_anon(os.getpid())


import click  # noqa: E402  (the command, registered by bench/cli.py)


def _positive(text: str) -> int:
    n = parse_size(text)
    if n <= 0:
        raise click.BadParameter(f"{text!r}: a bucket needs a size above 0")
    return n


@click.command("live")
@click.option("--mode", type=click.Choice(["save", "buckets"]), default="save", show_default=True,
              help="save: live.save_hf against the two-step path and the collectives (TP x PP processes). buckets: into an "
                   "engine's memory (one more process): hf_buckets, per-tensor hf_weights, the vLLM source (vllm_full, vllm_local: "
                   "where vLLM imports, or from the folder NANOKERN_VLLM_PATH names) and the two-step path against "
                   "the transport's floor (bench/live_buckets.py).")
@click.option("--size", default="200MB", show_default=True, help="Synthetic checkpoint size (20MB, 1GB, ...).")
@click.option("--tp", type=click.IntRange(1), default=2, show_default=True)
@click.option("--pp", type=click.IntRange(1), default=2, show_default=True)
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True, help="Source dtype.")
@click.option("--out-dtype", type=click.Choice(["keep", "fp32", "bf16", "fp16"]), default="bf16", show_default=True)
@click.option("--bucket-size", default="16MB", show_default=True, callback=lambda ctx, p, v: _positive(v),
              help="--mode buckets: hf_buckets' bucket_bytes (KB, MB, MiB, ...); the buckets path refills buffers kept "
                   "across reps (live.BucketBuffers), as a job pushing every few steps does.")
@click.option("--reps", type=click.IntRange(1), default=1, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cuda: NCCL, one GPU per process (TP x PP GPUs; --mode buckets: one more).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Synthetic checkpoints [default: nanokern-bench-cache/ in the temporary folder].")
@click.option("--scratch-dir", type=click.Path(file_okay=False), default=None,
              help="Outputs go to a new private folder made inside it, removed at the end [default: inside the cache dir].")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="Append the row(s) to this CSV file (save: benchmarks/results/live.csv; buckets: "
                   "benchmarks/results/live_buckets.csv) [default: none].")
def live_cmd(mode, size, tp, pp, dtype, out_dtype, bucket_size, reps, device, cache_dir, scratch_dir, csv_path):
    """Export from a running job: live.save_hf against the two-step path (Nanotron-layout save +
    `nanokern convert`) and against the collectives alone, under torchrun (TP x PP processes);
    or, --mode buckets, into an inference engine's memory against the transport's floor."""
    if mode == "buckets":
        from nanokern.bench import live_buckets

        rows = live_buckets.run(size, tp, pp, dtype, out_dtype, reps, device, cache_dir, scratch_dir, bucket_size, click.echo)
        live_buckets.print_rows(rows, click.echo)
        if csv_path:
            append_csv_rows(Path(csv_path), live_buckets.COLUMNS, rows)
            click.echo(f"appended {len(rows)} rows to {csv_path}")
        if any(r["identical"] is False for r in rows):
            raise click.ClickException("the engine's tensors differ between paths")
        return
    row = run(size, tp, pp, dtype, out_dtype, reps, device, cache_dir, scratch_dir, click.echo)
    click.echo(",".join(COLUMNS))
    click.echo(",".join(str(row[c]) for c in COLUMNS))
    if csv_path:
        append(Path(csv_path), row)
        click.echo(f"appended a row to {csv_path}")
    if row["identical"] is False:
        raise click.ClickException("live.save_hf and nanokern convert outputs differ")


if __name__ == "__main__":
    worker(sys.argv[1])
