"""`nanokern verify`: audit a checkpoint, or compare two checkpoints tensor by tensor.

Structure, shapes and shard coverage are checked when the source is read (formats/*). Here
every logical tensor is materialised one at a time (memory bounded by the largest tensor) and
checked for finiteness, or compared bit for bit with the same tensor of another checkpoint in
any layout (Nanotron at any TP x PP, or HF).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from nanokern.convert import load_source
from nanokern.errors import NanokernError
from nanokern.execute.manifest import MANIFEST, check_manifest
from nanokern.io.safetensors import map_tensor
from nanokern.plan.model import LogicalTensor


def materialize(t: LogicalTensor, maps: dict) -> torch.Tensor:
    rows, cols = t.shape2d
    out = torch.empty((rows, cols), dtype=t.dtype.torch)
    for b in t.blocks:
        src = map_tensor(b.ref, maps)
        src = (src.t() if b.transpose else src)[:, b.src_col0 : b.src_col0 + b.ncols]
        out[torch.from_numpy(b.dst_rows), b.dst_col0 : b.dst_col0 + b.ncols] = src[torch.from_numpy(b.src_rows)]
    return out.view(t.shape)


@dataclass
class VerifyReport:
    path: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tensors: int = 0
    checksummed: int = 0
    only_checksums: bool = False  # (a quantized folder: its bytes against the manifest, nothing read)

    @property
    def ok(self) -> bool:
        return not self.problems


def _root_of(model) -> Path:
    p = Path(model.path)
    return p.parent if model.origin == "nanotron" else p


def _quantized(path) -> bool:
    from nanokern.formats import hf

    return hf.is_hf(path) and not Path(path, "latest.txt").exists() and hf.is_quantized(hf.read_config(path))


def verify(path, against=None, strict_finite: bool = True) -> VerifyReport:
    if _quantized(path):  # (an FP8 export: its bytes against the CRC32s recorded when they were written)
        if against is not None:
            raise NanokernError("comparing a quantized (FP8) folder with another is not supported yet", path)
        rep = VerifyReport(str(path), only_checksums=True, notes=[
            "a quantized (FP8) folder: checked the checksums of every file and tensor nanokern wrote; values and "
            "structure are not read"])
        notes, rep.problems, rep.checksummed = check_manifest(Path(path))
        rep.problems += ["no " + MANIFEST + ": nothing to check it against"] if notes else []
        return rep
    a = load_source(path)
    rep = VerifyReport(str(path), notes=list(a.warnings))
    notes, problems, rep.checksummed = check_manifest(_root_of(a))
    rep.notes += notes
    rep.problems += problems
    maps_a: dict = {}
    b = load_source(against) if against is not None else None
    maps_b: dict = {}
    if b is not None:
        if set(a.tensors) != set(b.tensors):
            rep.problems.append(f"tensor sets differ: only in {path}: {sorted(set(a.tensors) - set(b.tensors))[:3]}, "
                                f"only in {against}: {sorted(set(b.tensors) - set(a.tensors))[:3]}")
        for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"):
            if getattr(a.spec, k) != getattr(b.spec, k):
                rep.problems.append(f"config {k}: {getattr(a.spec, k)} vs {getattr(b.spec, k)}")
        if rep.problems:
            return rep
    casts: dict[tuple, list[str]] = {}
    for name, t in a.tensors.items():
        x = materialize(t, maps_a)
        rep.tensors += 1
        if strict_finite and x.is_floating_point() and not torch.isfinite(x).all():
            n = int((~torch.isfinite(x)).sum())
            rep.problems.append(f"{name}: {n} non-finite value(s)")
        if b is None:
            continue
        y = materialize(b.tensors[name], maps_b)
        if x.shape != y.shape:
            if x.dim() == 2 and x.shape[1] == y.shape[1]:
                n = min(x.shape[0], y.shape[0])
                rep.notes.append(f"{name}: {x.shape[0]} vs {y.shape[0]} rows (vocab padding): compared the first {n}")
                x, y = x[:n], y[:n]
            else:
                rep.problems.append(f"{name}: shape {list(x.shape)} vs {list(y.shape)}")
                continue
        if x.dtype != y.dtype:
            low = x.dtype if x.dtype.itemsize <= y.dtype.itemsize else y.dtype
            casts.setdefault((x.dtype, y.dtype, low), []).append(name)
            x, y = x.to(low), y.to(low)
        if not torch.equal(x.view(torch.uint8) if x.numel() else x, y.view(torch.uint8) if y.numel() else y):
            diff = (x.float() - y.float()).abs().nan_to_num(float("inf")).max().item()
            rep.problems.append(f"{name}: values differ (max |diff| {diff:.3g})")
    for (da, db, low), names in casts.items():  # one note per pair of dtypes, not one per tensor
        what = names[0] if len(names) == 1 else f"{len(names)} of {rep.tensors} tensors (e.g. {names[0]})"
        rep.notes.append(f"{what}: dtypes {_dt(da)} vs {_dt(db)}: compared after rounding to {_dt(low)}")
    return rep


def _dt(d) -> str:
    return str(d).replace("torch.", "")
