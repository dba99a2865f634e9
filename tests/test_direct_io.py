"""SequentialWriter: the bytes on disk are the bytes produced, whatever the region sizes, the
ramp of buffer sizes, O_DIRECT or not; checks see each region's final bytes, in order."""

import functools
import mmap
import os
import time
import zlib

import numpy as np
import pytest

from nanokern.io import direct, prealloc
from nanokern.io.direct import ALIGN, SequentialWriter


def _produce(path, data: bytes, sizes, **kw):
    w = SequentialWriter(path, len(data), max_region=max(sizes), **kw)
    seen = []
    pos = 0
    try:
        for n in sizes:
            n = min(n, len(data) - pos)
            region = w.region(n)
            region[:] = np.frombuffer(data, np.uint8, n, pos)
            w.check(lambda r=region, at=pos: seen.append((at, zlib.crc32(r))))
            w.advance(n)
            pos += n
            if pos == len(data):
                break
        w.close()
    except BaseException:
        w.abort()
        raise
    return seen


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("chunk,first", [(64 << 10, 4 << 10), (ALIGN, ALIGN), (1 << 20, 1 << 20)])
def test_file_bytes_and_checks(tmp_path, direct, chunk, first):
    rng = np.random.default_rng(chunk + first + direct)
    size = 3 * chunk + 12345  # not a multiple of the block size: padded, then truncated
    data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    sizes = [int(s) for s in rng.integers(1, 3 * ALIGN, size // ALIGN + 8)]
    path = tmp_path / "out.bin"
    seen = _produce(path, data, sizes, chunk=chunk, first_chunk=first, depth=2, direct=direct)
    assert path.read_bytes() == data
    starts = [at for at, _ in seen]
    assert starts == sorted(starts) and len(starts) == len(set(starts))  # in submission order, once each
    ends = starts[1:] + [size]
    assert [c for _, c in seen] == [zlib.crc32(data[a:b]) for a, b in zip(starts, ends)]


def test_ramp_starts_small_and_grows_to_the_chunk(tmp_path):
    w = SequentialWriter(tmp_path / "f", 64 << 20, chunk=8 << 20, max_region=ALIGN, first_chunk=1 << 20, depth=2)
    rooms = []
    while w.offset < 64 << 20:
        rooms.append(w.room)
        w.region(w.room)[:] = 0
        w.advance(w.room)
    w.close()
    assert rooms[:5] == [1 << 20, 2 << 20, 4 << 20, 8 << 20, 8 << 20]


def test_a_buffer_is_not_reused_before_its_checks_are_done(tmp_path):
    """Slow checks: the producer must wait for them, not refill a buffer they still read."""
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    w = SequentialWriter(tmp_path / "f", len(data), chunk=64 << 10, max_region=16 << 10, first_chunk=64 << 10, depth=2)
    seen = []

    def slow_crc(region, at):
        time.sleep(0.01)
        seen.append((at, zlib.crc32(region)))

    for at in range(0, len(data), 16 << 10):
        region = w.region(16 << 10)
        region[:] = np.frombuffer(data, np.uint8, 16 << 10, at)
        w.check(functools.partial(slow_crc, region, at))
        w.advance(16 << 10)
    w.close()
    assert seen == [(at, zlib.crc32(data[at : at + (16 << 10)])) for at in range(0, len(data), 16 << 10)]


def _boom():
    raise RuntimeError("check failed")


def test_a_failing_check_is_raised_and_the_writer_stops(tmp_path):
    w = SequentialWriter(tmp_path / "f", 1 << 20, chunk=64 << 10, max_region=ALIGN, first_chunk=64 << 10, depth=2)
    w.check(_boom)
    with pytest.raises(RuntimeError, match="check failed"):
        for _ in range(256):
            w.region(ALIGN)[:] = 0
            w.advance(ALIGN)
        w.close()
    w.abort()
    assert not any(t.is_alive() for t in w.threads)


def test_an_error_met_by_close_stops_the_threads(tmp_path):
    """The check of an earlier buffer failed; close() finds it on its final submit."""
    w = SequentialWriter(tmp_path / "f", 3 * ALIGN, chunk=2 * ALIGN, max_region=ALIGN, first_chunk=ALIGN, depth=2)
    w.check(_boom)
    w.region(ALIGN)[:] = 0
    w.advance(ALIGN)  # a full buffer: submitted, its check fails on the checker thread
    deadline = time.monotonic() + 10
    while w.error is None and time.monotonic() < deadline:
        time.sleep(0.005)
    w.region(ALIGN)[:] = 0
    w.advance(ALIGN)  # half of the next (2-block) buffer: nothing submitted until close()
    with pytest.raises(RuntimeError, match="check failed"):
        w.close()
    w.abort()
    assert not any(t.is_alive() for t in w.threads)


def _vmflags(addr: int) -> list[str]:
    """The VmFlags of the mapping of this process that holds addr (/proc/self/smaps)."""
    inside = False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= addr < hi
        elif inside and head == "VmFlags:":
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {addr:#x}")


def test_staging_buffers_are_whole_huge_pages_reused_across_files():
    """Each buffer starts on a 2 MiB boundary and spans whole huge pages (so that, advised to
    transparent huge pages, a request to the disk is a few contiguous segments), and a next
    file that needs a few KiB more gets the same buffers instead of faulting in new ones."""
    pool = direct._Pool()
    views = pool.take(3, (5 << 20) + 100)
    for v in views:
        assert np.frombuffer(v, np.uint8).ctypes.data % direct.HUGE_PAGE == 0
        assert len(v) % direct.HUGE_PAGE == 0 and len(v) >= (5 << 20) + 100
    again = pool.take(3, (5 << 20) + 8192)
    assert all(a is b for a, b in zip(again, views))
    assert pool.take(2, 64 << 20)[0] is not views[0] and len(pool.take(2, 64 << 20)[0]) == 64 << 20


@pytest.mark.skipif(not (hasattr(mmap, "MADV_HUGEPAGE") and os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled")
                         and os.path.exists("/proc/self/smaps")),
                    reason="no transparent huge pages on this system: the staging buffers are small pages")
def test_staging_buffers_ask_for_transparent_huge_pages():
    v = direct._Pool().take(1, 4 << 20)[0]
    assert "hg" in _vmflags(np.frombuffer(v, np.uint8).ctypes.data)  # madvise(MADV_HUGEPAGE) took


def test_preallocation_is_native_or_none(tmp_path, monkeypatch):
    """The writer reserves a file's blocks with fallocate(2) only: glibc's posix_fallocate
    emulates it where the filesystem has none (FUSE, NFSv3) by writing every 4 KiB block, one
    round trip each. Where fallocate(2) is refused, the same bytes are written without it."""
    def emulated(*_):
        raise AssertionError("posix_fallocate called")

    monkeypatch.setattr(os, "posix_fallocate", emulated)
    data = np.random.default_rng(7).integers(0, 256, 3 * ALIGN + 99, dtype=np.uint8).tobytes()
    _produce(tmp_path / "a.bin", data, [ALIGN] * 4, chunk=2 * ALIGN, first_chunk=ALIGN, depth=2, direct=False)
    assert (tmp_path / "a.bin").read_bytes() == data
    calls = []
    monkeypatch.setattr(prealloc, "_native_fallocate", lambda: lambda fd, mode, off, n: calls.append((mode, off, n)) or -1)
    _produce(tmp_path / "b.bin", data, [ALIGN] * 4, chunk=2 * ALIGN, first_chunk=ALIGN, depth=2, direct=False)
    assert (tmp_path / "b.bin").read_bytes() == data
    assert calls == [(0, 0, 4 * ALIGN)]  # (refused: nothing reserved, the file written all the same)
