"""The torchrun side of tests/test_live.py (gloo, CPU): one launch runs every case it is given.

Each case names a Nanotron fixture and the `nanokern convert` exports of it to compare with; the
world is cut into that fixture's TP x PP grid (ranks beyond TP x PP wait), each rank's shards
come from live.load_rank (or from an in-process model of NanotronParameter look-alikes), and
every rank checks what it yields. Failures are printed one per line ("FAIL ..."); exit 1 if any.
No test functions here: pytest collects nothing from this file.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from nanokern import live

FAILS: list[str] = []
PACKER: list = []  # vLLM's packed_tensor module, when the spec names its file


def check(ok: bool, what: str) -> None:
    if not ok:
        FAILS.append(f"FAIL rank {dist.get_rank()}: {what}")


def groups(tp: int, pp: int):
    """(tp_group, pp_group) of this rank in a TP x PP grid over ranks 0..tp*pp-1 (TP fastest);
    every rank of the world creates every group, in the same order."""
    mine = [None, None]
    r = dist.get_rank()
    for p in range(pp):
        g = dist.new_group([p * tp + t for t in range(tp)])
        if r // tp == p and r < tp * pp:
            mine[0] = g
    for t in range(tp):
        g = dist.new_group([p * tp + t for p in range(pp)])
        if r % tp == t and r < tp * pp:
            mine[1] = g
    return mine


def reference(folder: str) -> dict:
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- an in-process stand-in for a Nanotron model: NanotronParameter's metadata, duck-typed -----

class SlicesPair:
    def __init__(self, local_slices, global_slices):
        self.local_slices, self.global_slices = local_slices, global_slices


class Info:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class FakeParam(torch.nn.Parameter):
    def __new__(cls, data, sharded=None, tied=None):
        p = torch.nn.Parameter._make_subclass(cls, data, False)
        p._sharded, p._tied = sharded, tied
        return p

    is_sharded = property(lambda self: self._sharded is not None)
    is_tied = property(lambda self: self._tied is not None)

    def get_sharded_info(self):
        return self._sharded

    def get_tied_info(self):
        return self._tied


def fake_model(sh, lm_head_tied: bool):
    """A module tree holding this rank's shards as Nanotron names them; replicated parameters
    tied under their own name, and with tied embeddings a second lm_head parameter tied to the
    embedding (as Nanotron's tie_word_embeddings does)."""
    root = torch.nn.Module()

    def put(name, param):
        *path, leaf = name.split(".")
        m = root
        for part in path:
            if not hasattr(m, part) or part not in m._modules:
                m.add_module(part, torch.nn.Module())
            m = m._modules[part]
        m.register_parameter(leaf, param)

    for name, lp in sh.params.items():
        if lp.pairs is None:
            put(name, FakeParam(lp.tensor, tied=Info(name=name, root_module=root)))
            continue
        pairs = tuple(SlicesPair(tuple(slice(a, b) for a, b in loc), tuple(slice(a, b) for a, b in glo)) for loc, glo in lp.pairs)
        info = Info(global_ranks=(), local_global_slices_pairs=pairs, unsharded_shape=lp.gshape)
        tie = Info(name=name, root_module=root) if lm_head_tied and name.endswith("token_embedding.weight") else None
        put(name, FakeParam(lp.tensor, sharded=info, tied=tie))
        if tie is not None:  # the lm_head: another parameter (same shard), tied to the embedding's name
            put("model.lm_head.pp_block.weight", FakeParam(lp.tensor.clone(), sharded=info, tied=tie))
    root.config = sh.config
    return root


def check_buckets(hf_buckets, src, tpg, ppg, dtype, opts, meta, want, what: str, ranks) -> None:
    """hf_buckets with buckets of half the largest tensor (so it travels alone, the others packed),
    two buffers: each bucket unpacked at once (its buffer is refilled two buckets later) equals
    the export; names and order are hf_metadata's, indexes count up, only the last is last."""
    sizes = {n: int(torch.Size(shape).numel()) * dt.itemsize for n, shape, dt in meta}
    cap = max(sizes.values()) // 2
    stats: dict = {}
    names, index, lasts = [], [], []
    for b in hf_buckets(src, tpg, ppg, dtype, ranks=ranks, bucket_bytes=cap, num_buffers=2, stats=stats, **opts):
        index.append(b.index)
        lasts.append(b.last)
        check(b.packed_tensor.dtype == torch.uint8 and b.packed_tensor.dim() == 1 and b.packed_tensor.numel() == b.ends[-1],
              f"{what}: bucket {b.index}'s packed_tensor is not its bytes")
        check(b.tensor_sizes == [sizes[n] for n in b.names], f"{what}: bucket {b.index}'s tensor_sizes are not the tensors' bytes")
        check(len(b.names) == 1 or b.ends[-1] <= cap, f"{what}: bucket {b.index} holds {b.ends[-1]} bytes, over {cap}")
        check(b.starts == [0, *b.ends[:-1]], f"{what}: bucket {b.index} is not packed back to back")
        for n, t in live.unpack(b):
            names.append(n)
            check(same(t, want[n]), f"{what}: {n} unpacked from bucket {b.index} differs from the convert export")
    mine = ranks == "all" or ranks == dist.get_rank()
    check(names == ([n for n, *_ in meta] if mine else []), f"{what}: ranks={ranks}: buckets hold {len(names)} tensors")
    check(index == list(range(len(index))) and lasts == [False] * (len(lasts) - 1) + [True] * mine, f"{what}: index/last {index} {lasts}")
    check((stats["peak_bytes"] > 0 or not mine) and stats["peak_bytes"] <= stats["bound_bytes"], f"{what}: buckets' peak {stats}")


def vllm_packer(path: str):
    """vLLM's own packed_tensor.py (pack_tensors, unpack_tensor: what its NCCL engine runs in
    packed mode), loaded from its file alone (it imports only torch; not the vllm package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("vllm_packed_tensor", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def check_vllm_packed(packer, weights, want, what: str, buffer_bytes: int) -> int:
    """Feed hf_weights to vLLM's pack_tensors as its trainer does (it keeps the yielded tensors and
    concatenates them later), unpack every chunk with its unpack_tensor: every tensor equals the
    export's. The number of tensors seen."""
    it, seen = iter(weights), 0
    while (chunk := packer.pack_tensors(it, post_iter_func=lambda item: item[1], buffer_size_bytes=buffer_bytes)) is not None:
        for n, t in packer.unpack_tensor(chunk.packed_tensor, chunk.names, chunk.shapes, chunk.dtypes, chunk.tensor_sizes):
            check(n in want and same(t, want[n]), f"{what}: {n} through vLLM's pack_tensors differs from the convert export")
            seen += 1
    return seen


def run_case(case: dict, tpg, ppg, out: Path) -> None:
    """Every check of one case; `out` is the case's own folder."""
    fx, dtypes_ = case["fixture"], case.get("dtypes", {})
    rank = dist.get_rank()
    sh = live.load_rank(fx, dist.get_rank(tpg), dist.get_rank(ppg))
    if case.get("broken"):  # the last rank lost a shard: every rank says so, in one line, and none hangs
        name = next(n for n, p in sh.params.items() if p.pairs is not None and "qkv_proj" in n)
        if rank == dist.get_world_size(tpg) * dist.get_world_size(ppg) - 1:
            del sh.params[name]
        try:
            live.save_hf(sh, out / "broken", tpg, ppg)
            check(False, f"{fx}: save_hf without a shard did not fail")
        except live.NanokernError as e:
            check("missing TP shard" in str(e) and not (out / "broken").exists(), f"{fx}: {e}")
        return
    src = fake_model(sh, case.get("tied_lm_head", False)) if case.get("module") else sh
    opts = {k: case[k] for k in ("vocab_size",) if k in case}
    for dtype, ref_dir in dtypes_.items():
        want = reference(ref_dir)
        meta = live.hf_metadata(src, tpg, ppg, dtype, **opts)
        check(sorted(n for n, *_ in meta) == sorted(want), f"{fx} {dtype}: hf_metadata names differ from the export's")
        got = list(live.hf_weights(src, tpg, ppg, dtype, **opts))  # kept, not cloned: each stays valid
        check([n for n, _ in got] == [n for n, *_ in meta], f"{fx} {dtype}: hf_weights order is not hf_metadata's")
        if "order" in case:
            check([n for n, *_ in meta] == case["order"], f"{fx} {dtype}: not transformers' state_dict order")
        for (n, t), (_, shape, dt) in zip(got, meta):
            check(tuple(t.shape) == shape and t.dtype == dt, f"{fx} {dtype}: {n} is {t.dtype} {tuple(t.shape)}, metadata says {dt} {shape}")
            check(n in want and same(t, want[n]), f"{fx} {dtype}: {n} kept in a list differs from the convert export")
        del got
        if PACKER:
            n = check_vllm_packed(PACKER[0], live.hf_weights(src, tpg, ppg, dtype, **opts), want, f"{fx} {dtype}", 1 << 16)
            check(n == len(meta), f"{fx} {dtype}: vLLM's pack_tensors saw {n} of {len(meta)} tensors")
        stats: dict = {}
        bad = [n for n, t in live.hf_weights(src, tpg, ppg, dtype, stats=stats, **opts) if not same(t, want[n])]
        check(not bad, f"{fx} {dtype}: {bad[:3]} differ when dropped at once")
        check(0 < stats["peak_bytes"] <= stats["bound_bytes"], f"{fx} {dtype}: peak {stats} over the bound")
        check_buckets(live.hf_buckets, src, tpg, ppg, dtype, opts, meta, want, f"{fx} {dtype}", "all")
        if case.get("save"):
            dst = out / f"{Path(fx).name}-{dtype}"
            live.save_hf(src, dst, tpg, ppg, dtype, tokenizer=case.get("tokenizer"), max_shard_size=case.get("max_shard_size", "5GB"), **opts)
            try:  # an existing folder is kept without force, on every rank's word
                live.save_hf(src, dst, parallel_context=Info(tp_pg=tpg, pp_pg=ppg), dtype=dtype, **opts)
                check(False, f"{fx} {dtype}: save_hf replaced an existing folder without force")
            except live.NanokernError as e:
                check("output exists" in str(e), f"{fx} {dtype}: {e}")
            if rank == 0:
                a, b = tree(dst), tree(Path(ref_dir))
                check(a == b, f"{fx} {dtype}: save_hf's folder differs from convert's: "
                              f"{sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))}")
    if case.get("dst") is not None:  # one destination: only it yields, the others take part
        dtype, ref_dir = next(iter(dtypes_.items()))
        want = reference(ref_dir)
        got = list(live.hf_weights(src, tpg, ppg, dtype, ranks=case["dst"], **opts))
        check(len(got) == (len(want) if rank == case["dst"] else 0), f"{fx}: ranks={case['dst']} yielded {len(got)} tensors on rank {rank}")
        check(all(same(t, want[n]) for n, t in got), f"{fx}: ranks={case['dst']}: {[n for n, t in got if not same(t, want[n])][:3]} differ")
        if PACKER:
            n = check_vllm_packed(PACKER[0], live.hf_weights(src, tpg, ppg, dtype, ranks=case["dst"], **opts), want,
                                  f"{fx}: ranks={case['dst']}", 1 << 16)
            check(n == (len(want) if rank == case["dst"] else 0), f"{fx}: ranks={case['dst']}: vLLM's pack_tensors saw {n} tensors")
        meta = live.hf_metadata(src, tpg, ppg, dtype, **opts)
        check_buckets(live.hf_buckets, src, tpg, ppg, dtype, opts, meta, want, f"{fx} {dtype}", case["dst"])
    if case.get("change"):  # the shards move: the next call yields the new weights (x2 is exact in every dtype)
        dtype, ref_dir = next(iter(dtypes_.items()))
        want = reference(ref_dir)
        for p in sh.params.values():
            p.tensor.mul_(2)  # (the look-alike model's parameters share these tensors)
        for n, t in live.hf_weights(src, tpg, ppg, dtype, **opts):
            check(same(t, (want[n].float() * 2).to(want[n].dtype)), f"{fx} {dtype}: {n} after the shards changed: stale or wrong")


def run_cases(cases: list, run, label: str) -> None:
    """Each case on the first TP x PP ranks of the world (the others wait at the barrier):
    run(i, case, tp_group, pp_group); an exception is a failure of the case. Then every rank's
    failures printed, and exit 1 if any rank had one."""
    for i, case in enumerate(cases):
        tp, pp = case["tp"], case["pp"]
        tpg, ppg = groups(tp, pp)
        if dist.get_rank() < tp * pp:
            try:
                run(i, case, tpg, ppg)
            except Exception:  # noqa: BLE001 - reported as a failure of the case
                FAILS.append(f"FAIL rank {dist.get_rank()}: {case['fixture']}: {traceback.format_exc()}")
        dist.barrier()
    for line in FAILS:
        print(line, flush=True)
    bad = torch.tensor([len(FAILS)])
    dist.all_reduce(bad)
    dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{label} checks: {int(bad)} failure(s)", flush=True)
    sys.exit(1 if int(bad) else 0)


def main() -> None:
    dist.init_process_group("gloo")
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(spec["out"])
    if spec.get("vllm_packer"):
        PACKER.append(vllm_packer(spec["vllm_packer"]))
    run_cases(spec["cases"], lambda i, case, tpg, ppg: run_case(case, tpg, ppg, out / str(i)), "live")

if __name__ == "__main__":
    main()
