"""The torchrun side of tests/test_live_engine.py (gloo, CPU), and the trainer -> engine example
the README shows (push_weights, receive_weights, load_weights: the README mirrors them).

World: ranks 0 .. W-2 hold a training job's TP x PP grid (each case uses the first TP x PP of
them; their shards from live.load_rank), the last rank is an inference engine: a transformers
model built from the export's config.json, every parameter NaN until loaded. The grid pushes
its weights over an update group (grid rank 0 + the engine) in live.hf_buckets; the engine
unpacks each bucket and loads it by name. It checks its weights and logits bit for bit against
the same model loaded from `nanokern convert`'s folder; then the grid takes a deterministic
"optimizer step" on its shards, pushes again, and the engine checks against the convert of the
checkpoint with the same step applied to its files. Failures: "FAIL ..." lines; exit 1 if any.
No test functions here: pytest collects nothing from this file.
"""

from __future__ import annotations

import json
import os
import re
import sys
import traceback
from dataclasses import fields
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from test_live_worker import groups

from nanokern import live

FAILS: list[str] = []


# ---- the example ------------------------------------------------------------------------------

def push_weights(shards, tp_group, pp_group, update_group, sender: int = 0, dtype: str = "bf16",
                 bucket_bytes: int = 1 << 30) -> None:
    """Trainer side: every rank of the TP x PP grid calls it (collective). Only global rank
    `sender` (a rank of the grid, and of update_group) gets the buckets; it broadcasts each one
    to the engine over update_group: its fields (names, shapes, dtypes, offsets, crc32, last),
    then its bytes, asynchronously: sent while the next bucket fills the other of hf_buckets'
    two buffers. The other ranks take part in the gathers only."""
    sending = None
    for b in live.hf_buckets(shards, tp_group, pp_group, dtype, ranks=sender, bucket_bytes=bucket_bytes, num_buffers=2):
        head = {f.name: getattr(b, f.name) for f in fields(b) if f.name != "packed_tensor"}
        if sending is not None:
            sending.wait()  # (the previous bucket is through: its buffer may be filled again)
        dist.broadcast_object_list([{**head, "nbytes": b.packed_tensor.numel()}], src=sender, group=update_group)
        sending = dist.broadcast(b.packed_tensor, src=sender, group=update_group, async_op=True)
    if sending is not None:
        sending.wait()


def receive_weights(model, update_group, sender: int = 0) -> list[str]:
    """Engine side: receive the buckets `sender` broadcasts, up to the last one; check each one's
    CRC32 (live.unpack) and load its tensors into `model` by name. The names loaded, in order."""
    names, buf = [], None
    while True:
        head = [None]
        dist.broadcast_object_list(head, src=sender, group=update_group)
        head = head[0]
        nbytes = head.pop("nbytes")
        if buf is None or buf.numel() < nbytes:
            buf = torch.empty(nbytes, dtype=torch.uint8, device=model.device)
        bucket = live.Bucket(packed_tensor=buf[:nbytes], **head)
        dist.broadcast(bucket.packed_tensor, src=sender, group=update_group)
        names += load_weights(model, live.unpack(bucket))
        if bucket.last:
            return names


EXPERT = re.compile(r"(.+\.experts)\.(\d+)\.(gate|up|down)_proj\.weight")


@torch.no_grad()
def load_weights(model, named_tensors) -> list[str]:
    """Copy (HF name, tensor) pairs into the model's parameters of that name (the export's
    names; an MoE layer's per-expert weights into transformers' fused [experts, ...] tensors:
    gate_up_proj[e] = [gate; up], down_proj[e] = down). Shapes must match; a tensor sent in
    another dtype (Qwen2-MoE's router, kept in fp32) is cast to the parameter's, as
    from_pretrained casts it."""
    params = dict(model.named_parameters(remove_duplicate=False))
    done = []
    for name, t in named_tensors:
        m = EXPERT.fullmatch(name)
        if m is None:
            dst = params[name]
        elif m[3] == "down":
            dst = params[f"{m[1]}.down_proj"][int(m[2])]
        else:
            fused = params[f"{m[1]}.gate_up_proj"][int(m[2])]
            half = fused.shape[0] // 2
            dst = fused[:half] if m[3] == "gate" else fused[half:]
        if dst.shape != t.shape:
            raise ValueError(f"{name}: {tuple(t.shape)} sent, the model holds {tuple(dst.shape)}")
        dst.copy_(t)
        done.append(name)
    return done


# ---- the checks -------------------------------------------------------------------------------

def fail(what: str) -> None:
    """Recorded, and printed at once (a failure that leaves another rank waiting still shows)."""
    FAILS.append(f"FAIL rank {dist.get_rank()}: {what}")
    print(FAILS[-1], flush=True)


def check(ok: bool, what: str) -> None:
    if not ok:
        fail(what)


def step(shards) -> None:
    """The "optimizer step": every element x -> x * 0.75 + 2**-8, two correctly rounded ops
    (the same on every rank and in the test's copy of the checkpoint's files)."""
    for p in shards.params.values():
        p.tensor.mul_(0.75).add_(2**-8)


def hf_model(folder: str, dtype, pretrained: bool, device: str = "cpu"):
    """transformers' model of the export: loaded from the folder, or built from its config.json
    with every parameter NaN (a parameter the push does not reach stays NaN)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if pretrained:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager")
    else:
        cfg = AutoConfig.from_pretrained(folder)
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="eager")
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
    return model.to(device).eval()


@torch.no_grad()
def compare(engine, folder: str, dtype, names: list[str], what: str, device: str):
    """The engine's weights and logits bit for bit against the model loaded from `folder`; its logits."""
    from safetensors.torch import load_file

    want = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        want.update(load_file(f))
    check(sorted(names) == sorted(want) and len(names) == len(set(names)), f"{what}: loaded {len(names)} names, the export has {len(want)}")
    ref = hf_model(folder, dtype, pretrained=True, device=device)
    a, b = engine.state_dict(), ref.state_dict()
    bad = [n for n in b if n not in a or a[n].dtype != b[n].dtype or not torch.equal(a[n], b[n])]
    check(sorted(a) == sorted(b) and not bad, f"{what}: weights differ from the convert folder's model: {bad[:3]}")
    ids = (torch.arange(2 * 12, device=device) * 37 % engine.config.vocab_size).view(2, 12)
    la, lb = engine(ids).logits, ref(ids).logits
    check(bool(torch.isfinite(lb).all()) and torch.equal(la, lb), f"{what}: logits differ from the convert folder's model's "
          f"(max |diff| {(la.float() - lb.float()).abs().max().item()})")
    return la


def run_case(case: dict, tpg, ppg, update, device: str) -> None:
    rank, engine = dist.get_rank(), dist.get_world_size() - 1
    tp, pp, what = case["tp"], case["pp"], Path(case["fixture"]).name
    dtype, bb = case["dtype"], case["bucket_bytes"]
    if rank == engine:
        tdt = getattr(torch, case["torch_dtype"])
        model = hf_model(case["before"], tdt, pretrained=False, device=device)
        before = compare(model, case["before"], tdt, receive_weights(model, update, sender=0), f"{what} first push", device)
        after = compare(model, case["after"], tdt, receive_weights(model, update, sender=0), f"{what} after a step", device)
        check(not torch.equal(before, after), f"{what}: the step did not change the logits")
    elif rank < tp * pp:
        sh = live.load_rank(case["fixture"], dist.get_rank(tpg), dist.get_rank(ppg), device=device)
        push_weights(sh, tpg, ppg, update, sender=0, dtype=dtype, bucket_bytes=bb)
        step(sh)
        push_weights(sh, tpg, ppg, update, sender=0, dtype=dtype, bucket_bytes=bb)


def main() -> None:
    if os.environ.get("RANK") == str(int(os.environ.get("WORLD_SIZE", "1")) - 1):
        import transformers  # noqa: F401  (the engine's slowest import, while the grid's ranks start)
    spec = json.loads(Path(sys.argv[1]).read_text())
    device = spec.get("device", "cpu")  # cuda: NCCL, one GPU per process
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # (a case that fails midway: no long hang)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=timedelta(seconds=120))
    update = dist.new_group([0, dist.get_world_size() - 1])
    for case in spec["cases"]:
        tpg, ppg = groups(case["tp"], case["pp"])
        try:
            run_case(case, tpg, ppg, update, device)
        except Exception:  # noqa: BLE001 - reported as a failure of the case
            fail(f"{case['fixture']}: {traceback.format_exc()}")
        dist.barrier()
    n = torch.tensor([len(FAILS)], device=device)
    dist.all_reduce(n)
    if dist.get_rank() == 0:
        print(f"engine checks: {int(n)} failure(s)", flush=True)
    dist.destroy_process_group()
    sys.exit(1 if int(n) else 0)


if __name__ == "__main__":
    main()
