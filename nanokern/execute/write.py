"""Writing one output file front to back.

Every output file's header and tensor offsets are known from the plan: each tensor is produced
in row chunks, gathered and cast by the fused kernel straight into the writer's staging buffer
and handed to the writer threads (O_DIRECT where the filesystem allows it, io/direct.py): every
byte is written once, no tensor is ever whole in memory. While a chunk is being written, the
writer's checker thread takes its CRC32 (for the manifest) and scans it for NaN/inf.
"""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path

import numpy as np
from zlib_ng.zlib_ng import crc32

from nanokern.execute.fill import Sources, fill_rows
from nanokern.execute.quant import BLOCK, fill_quant
from nanokern.execute.manifest import file_entry
from nanokern.io.direct import FIRST_CHUNK, SequentialWriter, SmallFileWriter
from nanokern.ops import host
from nanokern.plan import OutFile

# Bytes handed to the writer threads at a time. Staging memory is workers x (depth + 1) chunks,
# whatever the model. In whole 1 GB conversions as the user runs them (A/B, alternating) 16 MB
# was as fast as 8 and 32 MB; against the earlier chunks of up to 128 MB the import was 8% faster
# and the export within the noise, with a fifth of the memory (each buffer is faulted in page by
# page on first use: the import's 567 MB of staging cost about a fifth of its CPU in page faults).
CHUNK_BYTES = 16 << 20
WRITE_DEPTH = 2
# Files up to this size are built whole in memory and written at once, without writer threads
# (SmallFileWriter): layer norms, biases, small shards of a TP x PP checkpoint.
SMALL_FILE_BYTES = FIRST_CHUNK


class Cancelled(Exception):
    """Another writer failed or the run was interrupted: stop this file here."""


def _digest(raw: np.ndarray, out: np.ndarray, s: dict) -> None:
    s["finite"] = s["finite"] and host.all_finite(out)
    s["crc32"] = crc32(raw, s["crc32"])


def write_file(f: OutFile, path: Path, sources: Sources, backend: str, on_bytes=None, stager=None,
               direct: bool = True, chunk: int = CHUNK_BYTES, cancel: threading.Event | None = None,
               fsync: bool = True, phases=None) -> dict:
    """Write one output file; return its manifest entry (size, header and tensor CRC32s, non-finite).
    phases (execute/phases.py, bench convert's breakdown): the seconds this thread spent in the
    kernel (gather + cast, reading the memory-mapped source) and waiting for the writer."""
    # (an FP8 weight is filled 128 rows at a time at least: execute/quant.py)
    max_row = max((t.shape2d[1] * t.dtype.itemsize * (BLOCK if t.quant == "fp8" else 1) for t in f.tensors), default=0)
    scales: dict[str, np.ndarray] = {}  # FP8 weight -> its scale_inv, computed with it, written after it
    if f.size <= SMALL_FILE_BYTES:
        w = SmallFileWriter(path, f.size)
    else:
        w = SequentialWriter(path, f.size, chunk, max(max_row, len(f.header)), depth=WRITE_DEPTH, direct=direct)
    sums = {t.name: {"offset": t.offset, "nbytes": t.nbytes, "crc32": 0, "finite": True} for t in f.tensors}
    clock, kernel, waited = time.monotonic, 0.0, 0.0  # a few clock reads per chunk of 16 MB
    try:
        w.region(len(f.header))[:] = np.frombuffer(f.header, np.uint8)
        w.advance(len(f.header))
        for t in f.tensors:
            assert w.offset == t.offset, (t.name, w.offset, t.offset)
            rows, cols = t.shape2d
            row_bytes = cols * t.dtype.itemsize
            covered = sum(p.nrows * p.ncols for p in t.pieces) == rows * cols
            if t.quant == "fp8":
                scales[t.name] = np.zeros((rows // BLOCK, cols // BLOCK), np.float32)
            r0 = 0
            while row_bytes and r0 < rows:
                if cancel is not None and cancel.is_set():
                    raise Cancelled(str(path))
                step = max(1, w.room // row_bytes)
                if t.quant == "fp8":
                    step = max(BLOCK, step // BLOCK * BLOCK)
                r1 = min(rows, r0 + step)
                t0 = clock()
                raw = w.region((r1 - r0) * row_bytes)
                t1 = clock()
                out = raw.view(t.dtype.np).reshape(r1 - r0, cols)
                if not covered:
                    out[...] = 0  # rows no piece covers (vocab padding) are zero
                if t.quant == "fp8":
                    fill_quant(t, r0, r1, out, scales[t.name], sources, backend, stager)
                elif t.quant == "scale_inv":
                    out[...] = scales.pop(t.scale_of)[r0:r1].view(out.dtype)
                else:
                    fill_rows(t, r0, r1, out, sources, backend, stager)
                t2 = clock()
                w.check(functools.partial(_digest, raw, out, sums[t.name]))
                w.advance(raw.size)
                kernel, waited = kernel + (t2 - t1), waited + (t1 - t0) + (clock() - t2)
                if on_bytes:
                    on_bytes(raw.size)
                r0 = r1
        t0 = clock()
        w.close(fsync=fsync)
        waited += clock() - t0
    except BaseException:
        w.abort()
        raise
    if phases is not None:
        phases.add("kernel", kernel)
        phases.add("write", waited)
        for key, v in zip(("pwrites", "pwrite bytes", "pwrite s", "pwrite byte s"), getattr(w, "io", ())):
            phases.add(key, v)  # (bench convert: the writes in flight, on average)
    if on_bytes:
        on_bytes(len(f.header))
    return file_entry(f.size, f.header, sums)
