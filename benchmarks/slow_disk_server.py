#!/usr/bin/env python3
"""A disk with a given per-request latency, for benchmarks (set up by slow_disk.sh; Linux, root).

A minimal FUSE server, written against the kernel's FUSE protocol (/dev/fuse) with the standard
library only: it exposes ONE file, `disk.img`, backed by a file on a real disk. slow_disk.sh
attaches a loop device to that file (direct I/O: the loop device passes its requests on
asynchronously, as many at once as it has) and makes an ext4 on it, so everything above sees an
ordinary block device: O_DIRECT, page-cache writeback, fsync and syncfs behave as on a disk.

Every read or write request reaching the server completes `--latency-ms` after it arrived, plus
its transfer time at `--mbps` (one link, shared: transfers queue behind each other). Up to
`--depth` requests are served at once (the kernel's max_background, and as many server threads):
a writer with one request in flight gets one request per round trip, one with many in flight
gets up to the link's bandwidth, as on a network or parallel filesystem's disk. A flush (fsync)
costs one round trip; the backing file is written with O_DIRECT where it allows (nothing of the
simulated disk lingers in the host's page cache for a later `sync` to write), and is never
fsynced: the simulated disk has a non-volatile cache, its contents are for benchmarks only.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import mmap
import os
import signal
import struct
import sys
import threading
import time

IN_HDR = struct.Struct("<IIQQIIIHH")  # len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding
OUT_HDR = struct.Struct("<IiQ")  # len, error, unique
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # ino size blocks atime mtime ctime (ns x3) mode nlink uid gid rdev blksize flags
LOOKUP, FORGET, GETATTR, SETATTR, OPEN, READ, WRITE, STATFS, RELEASE, FSYNC, FLUSH, INIT = 1, 2, 3, 4, 14, 15, 16, 17, 18, 20, 25, 26
INTERRUPT, DESTROY, BATCH_FORGET = 36, 38, 42
NO_REPLY = (FORGET, INTERRUPT, BATCH_FORGET)
ASYNC_READ, BIG_WRITES, ASYNC_DIO, MAX_PAGES = 1 << 0, 1 << 5, 1 << 15, 1 << 22
MAX_WRITE = 1 << 20
HEAD = IN_HDR.size + 40  # a WRITE's headers (fuse_in_header + fuse_write_in): its data starts here
NAME = b"disk.img"
ROOT, FILE = 1, 2


class Link:
    """Completion times: arrival + transfer (queued behind the transfers before it) + latency."""

    def __init__(self, latency: float, bps: float):
        self.latency, self.bps = latency, bps
        self.free_at = 0.0
        self.lock = threading.Lock()

    def done_at(self, nbytes: int, arrived: float) -> float:
        if not self.bps:
            return arrived + self.latency
        with self.lock:
            start = max(arrived, self.free_at)
            self.free_at = start + nbytes / self.bps
            return self.free_at + self.latency


class Server:
    def __init__(self, fuse_fd: int, backing: str, link: Link, depth: int):
        self.fd, self.link, self.depth = fuse_fd, link, depth
        self.inflight = self.requests = self.written = 0  # (the --stats file)
        self.count = threading.Lock()
        try:
            self.data = os.open(backing, os.O_RDWR | os.O_DIRECT)
        except OSError:
            self.data = os.open(backing, os.O_RDWR)
        self.size = os.fstat(self.data).st_size
        self.t0 = int(time.time())

    def attr(self, node: int) -> bytes:
        if node == ROOT:
            return ATTR.pack(ROOT, 0, 0, self.t0, self.t0, self.t0, 0, 0, 0, 0o40755, 2, 0, 0, 0, 4096, 0)
        return ATTR.pack(FILE, self.size, self.size // 512, self.t0, self.t0, self.t0, 0, 0, 0, 0o100600, 1, 0, 0, 0, 4096, 0)

    def reply(self, unique: int, body: bytes = b"", error: int = 0) -> None:
        try:
            os.write(self.fd, OUT_HDR.pack(OUT_HDR.size + len(body), -error, unique) + body)
        except OSError as e:  # the request was interrupted (ENOENT) or the mount is gone
            if e.errno not in (errno.ENOENT, errno.ENODEV):
                raise

    def serve(self) -> None:
        """One thread: read a request, answer it at its completion time."""
        head = bytearray(HEAD)
        m = mmap.mmap(-1, MAX_WRITE + 4096)  # page-aligned: the backing file may be O_DIRECT
        data = memoryview(m)
        while True:
            try:
                n = os.readv(self.fd, [head, data])
            except OSError as e:
                if e.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue
                if e.errno == errno.ENODEV:  # unmounted
                    return
                raise
            arrived = time.monotonic()
            _len, op, unique, node, *_ = IN_HDR.unpack_from(head)
            if op == WRITE:
                offset, size = struct.unpack_from("<QQI", head, IN_HDR.size)[1:]
                self.counted(1, size)
                os.pwritev(self.data, [data[:size]], offset)  # a whole-block write (the loop device's)
                self.wait(self.link.done_at(size, arrived))
                self.counted(-1, 0)
                self.reply(unique, struct.pack("<II", size, 0))
                continue
            arg = (bytes(head) + bytes(data[: max(0, n - HEAD)]))[IN_HDR.size : n]
            if op == READ:
                offset, size = struct.unpack_from("<QQI", arg)[1:]
                size = max(0, min(size, self.size - offset))
                got = os.preadv(self.data, [data[:size]], offset) if size else 0
                self.wait(self.link.done_at(got, arrived))
                self.reply(unique, bytes(data[:got]))
            elif op == FSYNC:  # the disk's cache flush: one round trip
                self.wait(arrived + self.link.latency)
                self.reply(unique)
            elif op not in NO_REPLY:
                self.answer(op, unique, node, arg)

    def counted(self, d: int, nbytes: int) -> None:
        with self.count:
            self.inflight += d
            self.requests += d > 0
            self.written += nbytes

    def stats(self, path: str) -> None:
        """Every 20 ms: writes in service now, writes and bytes so far (bench convert samples it)."""
        while True:
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                f.write(f"inflight {self.inflight}\nwrites {self.requests}\nbytes {self.written}\n")
            os.replace(tmp, path)
            time.sleep(0.02)

    @staticmethod
    def wait(until: float) -> None:
        left = until - time.monotonic()
        if left > 0:
            time.sleep(left)

    def answer(self, op: int, unique: int, node: int, arg: bytes) -> None:
        if op == INIT:
            major, minor, readahead, flags = struct.unpack_from("<IIII", arg)
            want = ASYNC_READ | BIG_WRITES | ASYNC_DIO | (MAX_PAGES if minor >= 28 else 0)
            body = struct.pack("<IIIIHHIIHHII", 7, min(minor, 31), readahead, flags & want, self.depth,
                               max(1, self.depth * 3 // 4), MAX_WRITE, 1, MAX_WRITE // 4096, 0, 0, 0)
            self.reply(unique, body + bytes(64 - len(body)))
        elif op == LOOKUP:
            if node == ROOT and arg.rstrip(b"\0") == NAME:
                self.reply(unique, struct.pack("<QQQQII", FILE, 0, 3600, 3600, 0, 0) + self.attr(FILE))
            else:
                self.reply(unique, error=errno.ENOENT)
        elif op in (GETATTR, SETATTR):  # (SETATTR: nothing changes; the size is fixed)
            self.reply(unique, struct.pack("<QII", 3600, 0, 0) + self.attr(node))
        elif op == OPEN:
            self.reply(unique, struct.pack("<QIi", 0, 0, 0))
        elif op == STATFS:
            self.reply(unique, struct.pack("<QQQQQIIII", self.size // 4096, 0, 0, 2, 0, 4096, 255, 4096, 0) + bytes(24))
        elif op in (RELEASE, FLUSH, DESTROY):
            self.reply(unique)
        else:
            self.reply(unique, error=errno.ENOSYS)


def mount(target: str, fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
    if libc.mount(b"slowdisk", target.encode(), b"fuse.slowdisk", 0x2 | 0x4, opts) != 0:  # MS_NOSUID | MS_NODEV
        e = ctypes.get_errno()
        raise OSError(e, f"mount {target}: {os.strerror(e)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("backing", help="the file holding the disk's bytes (its size is the disk's)")
    ap.add_argument("mountpoint", help="an empty folder: disk.img appears in it")
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--mbps", type=float, default=0.0, help="the link's bandwidth in MB/s (0: unlimited)")
    ap.add_argument("--depth", type=int, default=64, help="requests served at once")
    ap.add_argument("--ready", help="write this file once mounted")
    ap.add_argument("--stats", help="keep the writes in service, and so far, in this file (every 20 ms)")
    a = ap.parse_args()
    fd = os.open("/dev/fuse", os.O_RDWR)
    server = Server(fd, a.backing, Link(a.latency_ms / 1000, a.mbps * 1e6), a.depth)
    mount(a.mountpoint, fd)
    threads = [threading.Thread(target=server.serve, daemon=True) for _ in range(a.depth)]
    if a.stats:
        threading.Thread(target=server.stats, args=(a.stats,), daemon=True).start()
    for t in threads:
        t.start()
    if a.ready:
        with open(a.ready, "w") as f:
            f.write(str(os.getpid()))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
