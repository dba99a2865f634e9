"""Plans: what goes where, computed from layouts alone (no tensor data is read).

A writer describes each output tensor as `Source`s: rows of a logical tensor (a row map, so
permutations, vocab trimming and TP splits are free), a column range, and where they land in
the output. `resolve` composes those with the logical tensor's on-disk blocks into `Piece`s:
a row gather from one source file's tensor into a rectangle of the output, which is exactly
what the fused gather_cast kernel executes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nanokern.io.dtypes import DType
from nanokern.io.safetensors import TensorRef, build_header
from nanokern.io.units import human_bytes
from nanokern.plan.model import LogicalTensor, Model, shape2d


@dataclass
class Source:
    tensor: str  # logical tensor name
    rows: np.ndarray  # logical rows, one per output row starting at dst_row0
    col0: int
    ncols: int
    dst_row0: int = 0
    dst_col0: int = 0
    transpose: bool = False  # out[dst_row0 + i, dst_col0 + j] = logical[col0 + j, rows[i]]


@dataclass(frozen=True)
class Fp8Ref:
    """A block-quantized FP8 weight as a source (formats/hf_fp8.py): its float8_e4m3fn bytes and
    their scale grid. Pieces over it read dequantized values, `weight x scales` per block in float32
    then the cast (execute/fill.py, ops/fp8_dequant.gather_dequant): as a source it stands for
    float32 values; path, offset, dtype and shape are the stored weight's (what is read from disk)."""

    weight: TensorRef  # float8_e4m3fn [R, C]
    scales: TensorRef  # [ceil(R / br), ceil(C / bc)]
    block: tuple[int, int]  # (br, bc)

    path = property(lambda self: self.weight.path)
    offset = property(lambda self: self.weight.offset)
    dtype = property(lambda self: self.weight.dtype)
    shape = property(lambda self: self.weight.shape)
    numel = property(lambda self: self.weight.numel)
    nbytes = property(lambda self: self.weight.nbytes)


@dataclass
class Piece:
    ref: TensorRef | Fp8Ref  # 2-D view of the source tensor
    rows: np.ndarray | None  # source rows (None: the contiguous range row0 .. row0+nrows)
    row0: int
    nrows: int
    col0: int
    ncols: int
    dst_row0: int
    dst_col0: int
    transpose: bool = False  # the source's 2-D view is transposed (rows/cols index its transpose)

    @property
    def src_bytes(self) -> int:
        return self.nrows * self.ncols * self.ref.dtype.itemsize


@dataclass
class OutTensor:
    name: str
    shape: tuple[int, ...]
    dtype: DType
    sources: list[Source] = field(default_factory=list)
    pieces: list[Piece] = field(default_factory=list)
    offset: int = 0  # absolute byte offset in its file, set by OutFile.layout()
    # FP8 (--dtype fp8): "fp8" for a block-quantized weight (dtype float8_e4m3fn), "scale_inv" for
    # its float32 [rows/128, cols/128] scales, computed with the weight and written after it
    quant: str | None = None
    scale_of: str | None = None  # the weight a "scale_inv" tensor belongs to
    scale_fmt: str = "float"  # an "fp8" weight's scales: "float", or "ue8m0" (powers of two: plan/fp8.py)

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for s in self.shape:
            n *= s
        return n

    @property
    def shape2d(self) -> tuple[int, int]:
        return shape2d(self.shape)


@dataclass
class OutFile:
    path: str  # relative to the output folder
    tensors: list[OutTensor]
    metadata: dict[str, str] | None = None
    header: bytes = b""

    def layout(self) -> None:
        """Fix the header and every tensor's offset (tensors are stored in list order)."""
        self.header, offsets = build_header([(t.name, t.dtype, t.shape) for t in self.tensors], self.metadata)
        for t, off in zip(self.tensors, offsets):
            t.offset = off

    @property
    def size(self) -> int:
        return len(self.header) + sum(t.nbytes for t in self.tensors)


@dataclass
class Plan:
    source: Model
    target: str  # "hf" or "nanotron"
    files: list[OutFile]
    aux: dict[str, bytes]  # small files written as-is (configs, index, tokenizer)
    warnings: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(f.size for f in self.files) + sum(len(b) for b in self.aux.values())

    @property
    def num_tensors(self) -> int:
        return sum(len(f.tensors) for f in self.files)


def _runs(idx: np.ndarray) -> list[tuple[int, int]]:
    """Split sorted indices into [start, stop) positions of consecutive runs."""
    if idx.size == 0:
        return []
    breaks = np.nonzero(np.diff(idx) != 1)[0] + 1
    bounds = [0, *breaks.tolist(), idx.size]
    return list(zip(bounds[:-1], bounds[1:]))


def _piece(ref, src_rows, col0, ncols, dst_row0, dst_col0, transpose=False) -> Piece:
    n = int(src_rows.size)
    r0 = int(src_rows[0])
    if n == 1 or np.array_equal(src_rows, np.arange(r0, r0 + n)):
        return Piece(ref, None, r0, n, col0, ncols, dst_row0, dst_col0, transpose)
    return Piece(ref, src_rows, 0, n, col0, ncols, dst_row0, dst_col0, transpose)


def _resolve_transposed(t: LogicalTensor, src: Source) -> list[Piece]:
    """out[dst_row0 + i, dst_col0 + j] = t[col0 + j, rows[i]]: the logical rows asked for must be
    a contiguous run of source rows within each block (true of whole tensors, e.g. experts)."""
    pieces, covered = [], 0
    for b in t.blocks:
        lo, hi = max(src.col0, int(b.dst_rows.min())), min(src.col0 + src.ncols, int(b.dst_rows.max()) + 1)
        if lo >= hi:
            continue
        pos = np.nonzero((b.dst_rows >= lo) & (b.dst_rows < hi))[0]
        order = pos[np.argsort(b.dst_rows[pos])]
        srows = b.src_rows[order]
        if not (np.array_equal(b.dst_rows[order], np.arange(lo, hi)) and np.array_equal(srows, np.arange(srows[0], srows[0] + hi - lo))):
            raise AssertionError(f"plan error: {t.name}: a transposed read needs contiguous rows")
        sel = np.nonzero((src.rows >= b.dst_col0) & (src.rows < b.dst_col0 + b.ncols))[0]
        for s0, s1 in _runs(sel):
            out_rows = sel[s0:s1]
            cols = src.rows[out_rows] - b.dst_col0 + b.src_col0  # columns of the block's source = rows of its transpose
            pieces.append(_piece(b.ref, cols, int(srows[0]), hi - lo, src.dst_row0 + int(out_rows[0]),
                                 src.dst_col0 + lo - src.col0, not b.transpose))
            covered += (s1 - s0) * (hi - lo)
    if covered != src.rows.size * src.ncols:
        raise AssertionError(f"plan error: {t.name} covers {covered} of {src.rows.size * src.ncols} requested elements")
    return pieces


def resolve_source(t: LogicalTensor, src: Source) -> list[Piece]:
    if src.transpose:
        return _resolve_transposed(t, src)
    nrows_logical = t.shape2d[0]
    pieces = []
    covered = 0
    for b in t.blocks:
        a = max(b.dst_col0, src.col0)
        e = min(b.dst_col0 + b.ncols, src.col0 + src.ncols)
        if a >= e:
            continue
        pos = np.full(nrows_logical, -1, dtype=np.int64)
        pos[b.dst_rows] = np.arange(b.dst_rows.size, dtype=np.int64)
        k = pos[src.rows]
        sel = np.nonzero(k >= 0)[0]
        for s0, s1 in _runs(sel):
            out_rows = sel[s0:s1]
            src_rows = b.src_rows[k[out_rows]]
            pieces.append(
                _piece(b.ref, src_rows, b.src_col0 + (a - b.dst_col0), e - a, src.dst_row0 + int(out_rows[0]),
                       src.dst_col0 + (a - src.col0), b.transpose)
            )
            covered += (s1 - s0) * (e - a)
    if covered != src.rows.size * src.ncols:
        raise AssertionError(f"plan error: {t.name} covers {covered} of {src.rows.size * src.ncols} requested elements")
    return pieces


def resolve(plan: Plan) -> Plan:
    """Turn every output tensor's sources into pieces and lay out every file's header."""
    for f in plan.files:
        for t in f.tensors:
            t.pieces = [p for s in t.sources for p in resolve_source(plan.source.tensors[s.tensor], s)]
        f.layout()
    return plan


def describe(plan: Plan, limit: int | None = None) -> str:
    """Human-readable plan for --dry-run."""
    lines = [
        f"plan: {plan.source.origin} {plan.source.path} -> {plan.target}",
        f"  {len(plan.files)} weight file(s), {plan.num_tensors} tensor(s), {human_bytes(plan.nbytes)} to write",
    ]
    for w in plan.warnings:
        lines.append(f"  warning: {w}")
    for name in sorted(plan.aux):
        lines.append(f"  {name} ({len(plan.aux[name])} bytes)")
    shown = 0
    for f in plan.files:
        lines.append(f"  {f.path} ({f.size} bytes)")
        for t in f.tensors:
            if limit is not None and shown >= limit:
                continue
            shown += 1
            src = ", ".join(sorted({p.ref.path.rsplit("/", 1)[-1] for p in t.pieces})) or "zeros"
            lines.append(f"    {t.name} {list(t.shape)} {t.dtype} <- {len(t.pieces)} piece(s) from {src}")
    if limit is not None and shown < plan.num_tensors:
        lines.append(f"    ... {plan.num_tensors - shown} more tensor(s)")
    return "\n".join(lines)
