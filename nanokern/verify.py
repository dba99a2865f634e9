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
    only_checksums: bool = False  # (no longer set: an FP8 folder's values are read too, verify_fp8.py)

    @property
    def ok(self) -> bool:
        return not self.problems


def _root_of(model) -> Path:
    p = Path(model.path)
    return p.parent if model.origin == "nanotron" else p


def _load(path):
    """(model, name -> Fp8Weight): an FP8 folder's weights as stored (dequantized when read)."""
    from nanokern import verify_fp8

    if verify_fp8.is_fp8_folder(path):
        return verify_fp8.read_fp8(path)
    return load_source(path), {}


def verify(path, against=None, strict_finite: bool = True) -> VerifyReport:
    from nanokern import verify_fp8

    a, fp8_a = _load(path)
    rep = VerifyReport(str(path), notes=list(a.warnings))
    notes, problems, rep.checksummed = check_manifest(_root_of(a))
    if fp8_a and notes and not (Path(path) / MANIFEST).exists():
        notes = [f"no {MANIFEST} (not written by nanokern): no checksums to check; values read"]
    rep.notes += notes
    rep.problems += problems
    maps_a: dict = {}
    b, fp8_b = _load(against) if against is not None else (None, {})
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
    kinds: dict[str, list[str]] = {}
    casts: dict[tuple, list[str]] = {}
    for name, t in a.tensors.items():
        x = verify_fp8.dequantized(fp8_a[name], maps_a) if name in fp8_a else materialize(t, maps_a)
        rep.tensors += 1
        if name in fp8_a:
            rep.problems += verify_fp8.scale_problems(name, fp8_a[name], maps_a)
        if strict_finite and x.is_floating_point() and not torch.isfinite(x).all():
            n = int((~torch.isfinite(x)).sum())
            rep.problems.append(f"{name}: {n} non-finite value(s)")
        if b is None:
            continue
        if (name in fp8_a) != (name in fp8_b):  # an FP8 weight against its unquantized twin
            w, twin, maps = (fp8_a[name], materialize(b.tensors[name], maps_b), maps_a) if name in fp8_a else \
                (fp8_b[name], x, maps_b)
            kind, problem = verify_fp8.compare(name, w, twin, maps)
            kinds.setdefault(kind, []).append(name)
            rep.problems += [problem] if problem else []
            continue
        y = verify_fp8.dequantized(fp8_b[name], maps_b) if name in fp8_b else materialize(b.tensors[name], maps_b)
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
    rep.notes += verify_fp8.notes(kinds, against if fp8_a else path)
    for (da, db, low), names in casts.items():  # one note per pair of dtypes, not one per tensor
        what = names[0] if len(names) == 1 else f"{len(names)} of {rep.tensors} tensors (e.g. {names[0]})"
        rep.notes.append(f"{what}: dtypes {_dt(da)} vs {_dt(db)}: compared after rounding to {_dt(low)}")
    return rep


def _dt(d) -> str:
    return str(d).replace("torch.", "")
