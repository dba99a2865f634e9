"""What both `nanokern bench live` modes share: the private scratch folder, the torchrun launch,
the grid's process groups, and a rank's shards saved in Nanotron's layout (the two-step path)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def private_scratch(scratch_dir, cache: Path):
    """A fresh private folder (tempfile.mkdtemp) inside --scratch-dir (made if missing) or the
    cache dir: the workers' outputs go there, and only it is removed at the end (never the
    folder the user named, nor anything else in it)."""
    parent = Path(scratch_dir) if scratch_dir else cache
    parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="nanokern-live-", dir=parent))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def launch(nproc: int, module: str, spec: Path) -> dict:
    """torchrun NPROC processes of `python -m MODULE SPEC`; their result.json (beside the spec)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m", module, str(spec)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"bench live workers failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return json.loads((spec.parent / "result.json").read_text())


def join(spec_path: str):
    """A worker's start: its spec, whether it runs on CUDA (one GPU per process, LOCAL_RANK's),
    the process group (NCCL there, else gloo) and its (tp_group, pp_group) in the grid."""
    import os

    import torch
    import torch.distributed as dist

    spec = json.loads(Path(spec_path).read_text())
    cuda = spec["device"] == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return spec, cuda, *grid_groups(spec["tp"], spec["pp"])


def grid_groups(tp: int, pp: int):
    """(tp_group, pp_group) of this rank in the TP x PP grid over global ranks 0 .. tp*pp-1 (TP
    fastest; (None, None) on a rank past it, an engine's); every rank of the world calls it."""
    import torch.distributed as dist

    r, mine = dist.get_rank(), [None, None]
    for p in range(pp):
        g = dist.new_group([p * tp + t for t in range(tp)])
        mine[0] = g if r // tp == p and r < tp * pp else mine[0]
    for t in range(tp):
        g = dist.new_group([p * tp + t for p in range(pp)])
        mine[1] = g if r % tp == t and r < tp * pp else mine[1]
    return mine


def save_nanotron(sh, step: Path, tp: int, pp: int, tps: int, pps: int, owner: dict) -> None:
    """This rank's shards as Nanotron's save_weights writes them: one safetensors file per
    parameter (sharded: rank suffix and slice metadata; replicated: TP rank 0 of its stage)."""
    from safetensors.torch import save_file

    from nanokern.formats.nanotron import layout as L

    box = lambda b: "|".join(f"{a},{z},None" for a, z in b)  # noqa: E731
    for name, p in sh.params.items():
        if p.pairs is None:
            if tp != 0 or owner[L.block_of(name)] != pp:
                continue
            path, meta = step / L.param_path(name), {}
        else:
            if name == L.EMBED_NT and owner["embedding"] != pp:
                continue  # the tied lm_head's copy: saved once, by the embedding's stage
            path = step / L.param_path(name, pp, pps, tp, tps)
            meta = {"version": "1.5", "unsharded_shape": str(tuple(p.gshape)),
                    "local_global_slices_pairs": ";".join(f"{box(lo)}#{box(gl)}" for lo, gl in p.pairs)}
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"data": p.tensor.contiguous().cpu()}, str(path), metadata=meta)
