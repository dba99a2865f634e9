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

import torch

from nanokern.errors import NanokernError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes live: a file, an absolute byte offset, dtype and shape."""

    path: str
    offset: int
    dtype: torch.dtype
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


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Parse and validate a safetensors header; raise NanokernError naming the file."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise NanokernError("not a safetensors file (shorter than 8 bytes)", path)
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise NanokernError(f"corrupt safetensors header (declared length {n} bytes, file {size} bytes)", path)
            raw = f.read(n)
    except OSError as e:
        raise NanokernError(f"cannot read: {e.strerror}", path) from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise NanokernError("corrupt safetensors header (not JSON)", path) from None
    if not isinstance(header, dict):
        raise NanokernError("corrupt safetensors header (not a JSON object)", path)
    data_start = 8 + n
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise NanokernError("corrupt safetensors header (__metadata__ must map strings to strings)", path)
    tensors: dict[str, TensorRef] = {}
    for name, info in header.items():
        try:
            dtype = DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise NanokernError(f"corrupt safetensors header entry for tensor {name!r}", path) from None
        ref = TensorRef(path, data_start + begin, dtype, shape)
        if end - begin != ref.nbytes or begin < 0 or any(s < 0 for s in shape):
            raise NanokernError(
                f"tensor {name!r}: {end - begin} bytes stored for shape {list(shape)} {info['dtype']}", path
            )
        if data_start + end > size:
            raise NanokernError(
                f"truncated: tensor {name!r} needs bytes up to {data_start + end}, file has {size}", path
            )
        tensors[name] = ref
    return SafetensorsHeader(path, metadata, tensors, data_start)


def build_header(tensors: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str] | None) -> tuple[bytes, list[int]]:
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
        entries[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [rel, rel + nbytes]}
        rels.append(rel)
        rel += nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    head = struct.pack("<Q", len(raw)) + raw
    return head, [len(head) + r for r in rels]


def safetensors_order(tensors: list[tuple[str, torch.dtype, tuple[int, ...]]]):
    """The data order safetensors' own writer uses: larger dtypes first, then by name."""
    return sorted(tensors, key=lambda t: (-t[1].itemsize, t[0]))


def map_tensor(ref: TensorRef, maps: dict[str, mmap.mmap] | None = None) -> torch.Tensor:
    """A zero-copy, read-only CPU tensor over the file's bytes (memory-mapped)."""
    m = None if maps is None else maps.get(ref.path)
    if m is None:
        with open(ref.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
        if maps is not None:
            maps[ref.path] = m
    if ref.numel == 0:
        return torch.empty(ref.shape, dtype=ref.dtype)
    t = torch.frombuffer(m, dtype=ref.dtype, count=ref.numel, offset=ref.offset)
    return t.view(ref.shape)
