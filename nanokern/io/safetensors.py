"""safetensors headers: read them without loading data, build them before writing data.

Format: 8-byte little-endian header length N, N bytes of JSON (space-padded to a multiple of
8), then the raw tensor bytes; `data_offsets` are relative to the end of the header.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

from nanokern.errors import NanokernError
from nanokern.io.dtypes import BY_CODE, DType
from nanokern.io.regular import regular_size

MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes live: a file, an absolute byte offset, dtype and shape."""

    path: str
    offset: int
    dtype: DType
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass
class SafetensorsHeader:
    path: str
    metadata: dict[str, str]
    tensors: dict[str, TensorRef]
    data_start: int


def _uint(x) -> bool:
    return type(x) is int and x >= 0  # JSON integers only: no bools, floats or strings


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Parse and validate a safetensors header; raise NanokernError naming the file.

    Checks what safetensors' own loader checks: the header is a JSON object of tensor entries
    with a known dtype, a shape and data_offsets that hold exactly shape x dtype bytes; the
    tensors' bytes tile the data part of the file with no gap and no overlap, and the file ends
    where the last tensor does (shorter: truncated; longer: not a safetensors file as written).
    """
    path = os.fspath(path)
    size = regular_size(path)  # a FIFO or a device is refused before it is opened
    if size < 8:
        raise NanokernError(f"truncated: {size} bytes, not even a safetensors header length", path)
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n == 0 or n > MAX_HEADER:
                raise NanokernError(f"corrupt safetensors header: declared header length {n} bytes is implausible", path)
            if 8 + n > size:
                raise NanokernError(f"truncated or corrupt: the header declares {n} bytes but the file has "
                                    f"{size - 8} after the length", path)
            raw = f.read(n)
            if len(raw) < n:
                raise NanokernError(f"truncated: the header declares {n} bytes, {len(raw)} could be read", path)
    except OSError as e:
        raise NanokernError(f"cannot read: {e.strerror or e}", path) from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise NanokernError("corrupt safetensors header (not JSON)", path) from None
    if not isinstance(header, dict):
        raise NanokernError("corrupt safetensors header (not a JSON object)", path)
    data_start = 8 + n
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise NanokernError("corrupt safetensors header (__metadata__ must map strings to strings)", path)
    tensors: dict[str, TensorRef] = {}
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise NanokernError(f"corrupt safetensors header: the entry for tensor {name!r} is not an object", path)
        dt, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dt not in BY_CODE:
            what = f"unsupported dtype {dt!r}" if isinstance(dt, str) else f"no valid dtype ({dt!r})"
            raise NanokernError(f"tensor {name!r}: {what}", path)
        if not isinstance(shape, list) or not all(_uint(s) for s in shape):
            raise NanokernError(f"corrupt safetensors header: tensor {name!r} has shape {shape!r}, not a list of sizes", path)
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_uint(x) for x in offsets) or offsets[0] > offsets[1]:
            raise NanokernError(f"corrupt safetensors header: tensor {name!r} has data_offsets {offsets!r}", path)
        begin, end = offsets
        ref = TensorRef(path, data_start + begin, BY_CODE[dt], tuple(shape))
        if end - begin != ref.nbytes:
            raise NanokernError(
                f"corrupt safetensors header: tensor {name!r} has {end - begin} bytes (data_offsets {offsets}) "
                f"for shape {shape} {dt}, which needs {ref.nbytes}",
                path,
            )
        tensors[name] = ref
        spans.append((begin, end, name))
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            how = "overlap the previous tensor" if begin < pos else f"leave a gap of {begin - pos} bytes"
            raise NanokernError(f"corrupt safetensors header: data_offsets of tensor {name!r} {how}", path)
        pos = end
    if data_start + pos > size:
        raise NanokernError(f"truncated: the tensors need {data_start + pos} bytes but the file has {size}", path)
    if data_start + pos < size:
        raise NanokernError(f"corrupt: {size - data_start - pos} stray bytes after the last tensor", path)
    return SafetensorsHeader(path, metadata, tensors, data_start)


def build_header(tensors: list[tuple[str, DType, tuple[int, ...]]], metadata: dict[str, str] | None) -> tuple[bytes, list[int]]:
    """Header bytes (length prefix included) for tensors laid out in the given order.

    Returns the header and each tensor's byte offset relative to the start of the file.
    """
    entries: dict[str, object] = {}
    if metadata is not None:
        entries["__metadata__"] = metadata
    rel = 0
    rels = []
    for name, dtype, shape in tensors:
        nbytes = dtype.itemsize
        for s in shape:
            nbytes *= s
        entries[name] = {"dtype": dtype.code, "shape": list(shape), "data_offsets": [rel, rel + nbytes]}
        rels.append(rel)
        rel += nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    head = struct.pack("<Q", len(raw)) + raw
    return head, [len(head) + r for r in rels]


def _map(path: str, maps: dict[str, mmap.mmap] | None):
    m = None if maps is None else maps.get(path)
    if m is None:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
        if maps is not None:
            maps[path] = m
    return m


def close_maps(maps) -> None:
    """Unmap each memory map (None entries are empty files). A map that a live numpy view still
    exports (one held by an exception's traceback, say) is left to be unmapped when that view goes."""
    for m in maps:
        if m is not None:
            try:
                m.close()
            except BufferError:
                pass


def map_array(ref: TensorRef, maps: dict[str, mmap.mmap] | None = None) -> np.ndarray:
    """A zero-copy numpy view of the file's bytes (memory-mapped), in the dtype's storage type
    (bfloat16 as uint16 bits). Pass `maps` to map each file once; close them after."""
    if ref.numel == 0:
        return np.empty(ref.shape, dtype=ref.dtype.np)
    m = _map(ref.path, maps)
    return np.frombuffer(m, dtype=ref.dtype.np, count=ref.numel, offset=ref.offset).reshape(ref.shape)


def map_tensor(ref: TensorRef, maps: dict[str, mmap.mmap] | None = None):
    """The same view as a CPU torch tensor (imports torch)."""
    import torch

    if ref.numel == 0:
        return torch.empty(ref.shape, dtype=ref.dtype.torch)
    t = torch.frombuffer(_map(ref.path, maps), dtype=ref.dtype.torch, count=ref.numel, offset=ref.offset)
    return t.view(ref.shape)
