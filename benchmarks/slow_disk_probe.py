#!/usr/bin/env python3
"""How a folder's filesystem takes concurrent writes: does it overlap several O_DIRECT writes to
ONE file, or only writes to different files (per-file serialization, as the FUSE client and
ext4 before about 6.3 do for writes to unwritten, fallocated extents), and is buffered writing
with ranged write-back faster than O_DIRECT there?

    python3 benchmarks/slow_disk_probe.py FOLDER [--mb 256] [--chunk-mb 16] [--streams 4]

Each mode writes --mb MiB of random bytes in --chunk-mb writes, durably (each file fdatasynced
before its time is taken), into files it creates (O_EXCL) in a fresh folder under FOLDER, which
it removes at the end; nothing else is touched. Modes:

    1 file,  1 in flight   O_DIRECT, one writer thread (what `dd oflag=direct` measures)
    1 file,  N in flight   O_DIRECT, N threads on one file (more outstanding requests per writer)
    N files, 1 in flight   O_DIRECT, one thread per file (more files in flight)
    1 file,  buffered      pwrite + sync_file_range(WRITE) per chunk, WAIT + fdatasync at the end
    N files, buffered      the same, one thread per file

Per-file serialization shows as "1 file, N in flight" no faster than "1 file, 1 in flight" while
"N files" is faster. Linux only (O_DIRECT, sync_file_range).
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import statistics
import tempfile
import threading
import time

WRITE, WAIT_BEFORE, WAIT_AFTER = 2, 1, 4  # sync_file_range flags
_libc = ctypes.CDLL(None, use_errno=True)
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_libc.fallocate64.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def sync_range(fd: int, off: int, n: int, flags: int) -> None:
    if _libc.sync_file_range(fd, off, n, flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def write_files(folder: str, nfiles: int, per_file_threads: int, nbytes: int, chunk: int, direct: bool,
                buf: memoryview) -> float:
    """Write nbytes in all, split over nfiles, durably; return the seconds taken."""
    size = nbytes // nfiles // chunk * chunk
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            one_file(i)
        except BaseException as e:  # noqa: BLE001 - reported below (O_DIRECT refused: tmpfs, some FUSE)
            errors.append(e)

    def one_file(i: int) -> None:
        path = os.path.join(folder, f"probe-{i}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | (os.O_DIRECT if direct else 0), 0o600)
        try:
            _libc.fallocate64(fd, 0, 0, size)  # (where the filesystem has none, nothing: never glibc's emulation)
            offsets = list(range(0, size, chunk))
            lock = threading.Lock()

            def writer() -> None:
                try:
                    while True:
                        with lock:
                            if not offsets:
                                return
                            off = offsets.pop(0)
                        view, o = buf[:chunk], off
                        while view:
                            k = os.pwrite(fd, view, o)
                            view, o = view[k:], o + k
                        if not direct:
                            sync_range(fd, off, chunk, WRITE)  # start this range's write-back now
                except BaseException as e:  # noqa: BLE001 - reported below
                    errors.append(e)

            ts = [threading.Thread(target=writer) for _ in range(per_file_threads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            if not direct:
                sync_range(fd, 0, 0, WAIT_BEFORE | WRITE | WAIT_AFTER)
            os.fdatasync(fd)
        finally:
            os.close(fd)
            os.unlink(path)

    t0 = time.perf_counter()
    files = [threading.Thread(target=one, args=(i,)) for i in range(nfiles)]
    for t in files:
        t.start()
    for t in files:
        t.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--mb", type=int, default=256, help="MiB written per mode")
    ap.add_argument("--chunk-mb", type=int, default=16)
    ap.add_argument("--streams", type=int, default=4, help="N: threads on one file, or files")
    ap.add_argument("--reps", type=int, default=3, help="rounds, modes alternating; the median is shown")
    a = ap.parse_args()
    chunk, n = a.chunk_mb << 20, a.streams
    m = mmap.mmap(-1, chunk)  # page-aligned (O_DIRECT)
    m.write(os.urandom(chunk))
    buf = memoryview(m)
    modes = {
        "1 file,  1 in flight (O_DIRECT)": (1, 1, True),
        f"1 file,  {n} in flight (O_DIRECT)": (1, n, True),
        f"{n} files, 1 in flight each (O_DIRECT)": (n, 1, True),
        "1 file,  buffered + ranged write-back": (1, 1, False),
        f"{n} files, buffered + ranged write-back": (n, 1, False),
    }
    times: dict[str, list[float]] = {k: [] for k in modes}
    with tempfile.TemporaryDirectory(prefix="nanokern-probe-", dir=a.folder) as folder:
        for _ in range(a.reps):
            for name, (files, threads, direct) in modes.items():
                times[name].append(write_files(folder, files, threads, a.mb << 20, chunk, direct, buf))
    mbps = {k: (a.mb << 20) / statistics.median(v) / 1e6 for k, v in times.items()}
    for k, v in times.items():
        rates = sorted((a.mb << 20) / t / 1e6 for t in v)
        print(f"{k:42s} {mbps[k]:7.0f} MB/s (range {rates[0]:.0f}-{rates[-1]:.0f})")
    base, per_file, files = (mbps[k] for k in list(modes)[:3])
    print(f"more writes in flight on one file: x{per_file / base:.2f}; more files in flight: x{files / base:.2f}"
          + ("  -> writes to one file look serialized" if per_file < 1.15 * base and files > 1.25 * base else ""))


if __name__ == "__main__":
    main()
