"""What a run records in its output: the journal of finished files (for a resume), the checksum
manifest (for `nanokern verify`), and the fingerprint that ties both to one plan.

The manifest, `nanokern-manifest.json` at the root of the output, lists every weight file with
its size, its header's CRC32 and each tensor's offset, size and CRC32, taken while the bytes
were written. An export of a Nanotron checkpoint also records its source (`nanotron_source`: the
config class, the RoPE row order and the model_config.json fields config.json has no place for),
which an import of the export restores (formats/hf.py). The journal, `.nanokern-done-<rank>.json`
in the partial folder, lists the files a rank has finished and made durable; it is removed just
before the folder is renamed into place. The marker, `.nanokern-partial`, proves a partial
folder is nanokern's (the clean-up beside OUT removes nothing else); it goes after the rename.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import secrets
import stat
from pathlib import Path

from zlib_ng.zlib_ng import crc32  # zlib's CRC-32, SIMD: faster than the stdlib's

from nanokern.execute.durable import write_small
from nanokern.plan import Plan

MANIFEST = "nanokern-manifest.json"
JOURNAL_GLOB = ".nanokern-done-*.json"
MARKER = ".nanokern-partial"  # in a partial folder: nanokern made it (its own name inside, and a token)


def plan_fingerprint(plan: Plan) -> str:
    """Identifies a plan's output bytes, so an interrupted run resumes only the same plan."""
    h = hashlib.sha256()
    stats: dict[str, str] = {}
    for f in plan.files:
        h.update(f.path.encode() + f.header)
        for t in f.tensors:
            for p in t.pieces:
                if p.ref.path not in stats:
                    st = os.stat(p.ref.path)
                    stats[p.ref.path] = f"{st.st_size}:{st.st_mtime_ns}"
                h.update(f"{p.ref.path}:{stats[p.ref.path]}:{p.ref.offset}:{p.row0}:{p.nrows}:{p.col0}:{p.ncols}:{p.dst_row0}:{p.dst_col0}:{p.transpose}".encode())
                if p.rows is not None:
                    h.update(p.rows.tobytes())
    for name in sorted(plan.aux):
        h.update(name.encode() + hashlib.sha256(plan.aux[name]).digest())
    return h.hexdigest()[:16]


def partial_dir(dst: Path, fingerprint: str) -> Path:
    return dst.parent / f"{dst.name}.partial-{fingerprint}"


def make_work(work: Path) -> str:
    """Create the partial folder WORK with the marker that proves nanokern made it; its token."""
    token = secrets.token_hex(8)
    work.mkdir()
    write_small(work / MARKER, json.dumps({"format": "nanokern-partial", "folder": work.name, "token": token}).encode(),
                fsync=False)
    return token


def work_token(path: Path) -> str | None:
    """The token of a partial folder nanokern made (a real folder holding its marker, which
    names the folder); None for anything else, which is then never written into nor removed."""
    m = path / MARKER
    try:
        if path.is_symlink() or not stat.S_ISREG(os.lstat(m).st_mode) or os.lstat(m).st_size > 4096:
            return None
        info = json.loads(m.read_bytes())
    except (OSError, ValueError):
        return None
    ok = isinstance(info, dict) and info.get("format") == "nanokern-partial" and info.get("folder") == path.name
    return info.get("token") if ok and isinstance(info.get("token"), str) else None


def seen_by_all(work: Path, gather) -> str | None:
    """Once rank 0 has made WORK, every rank must see that very folder (the output lies on a
    filesystem all ranks share): None, or the error every rank raises. gather(obj): every
    rank's obj, in rank order (a collective)."""
    seen = gather(work_token(work))
    blind = [r for r, t in enumerate(seen) if t is None or t != seen[0]]
    if not blind:
        return None
    return (f"rank {blind[0]} does not see {work} that rank 0 made: the output must be on a filesystem "
            f"every rank sees, at the same path")


def finished(work: Path, plan: Plan) -> dict[str, dict]:
    """Files an earlier run of the same plan completed (made durable, then journaled)."""
    done: dict[str, dict] = {}
    for j in work.glob(JOURNAL_GLOB):
        try:
            done.update(json.loads(j.read_text()))
        except (json.JSONDecodeError, OSError):
            continue
    sizes = {f.path: f.size for f in plan.files}
    return {p: e for p, e in done.items() if p in sizes and (work / p).is_file() and (work / p).stat().st_size == sizes[p]}


def save_journal(work: Path, rank: int, entries: dict) -> None:
    journal = work / f".nanokern-done-{rank}.json"
    tmp = journal.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries))
    os.replace(tmp, journal)


def drop_journals(work: Path) -> None:
    for j in work.glob(JOURNAL_GLOB):
        j.unlink()


def file_entry(size: int, header: bytes, sums: dict) -> dict:
    """One file's manifest entry from its per-tensor sums ({name: offset, nbytes, crc32, finite})."""
    return {"size": size, "header_crc32": crc32(header),
            "tensors": {n: {k: v for k, v in s.items() if k != "finite"} for n, s in sums.items()},
            "nonfinite": [n for n, s in sums.items() if not s["finite"]]}


def write_manifest(work: Path, plan: Plan, entries: dict, fsync: bool) -> None:
    manifest = {"format": "nanokern-manifest", "version": 1, "target": plan.target,
                "files": {f.path: entries[f.path] for f in plan.files},
                "written": sorted([f.path for f in plan.files] + list(plan.aux))}  # everything else is the user's
    src = plan.source.layout
    if plan.target == "hf" and plan.source.origin == "nanotron":  # what an import of this export restores
        from nanokern.arch import nanotron_config

        manifest[nanotron_config.PROVENANCE] = nanotron_config.provenance(src.config_class, src.model_config,
                                                                          src.rope_interleaved)
    write_small(work / MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode(), fsync=fsync)


def check_manifest(root: Path) -> tuple[list[str], list[str], int]:
    """The bytes of every file listed in ROOT's manifest against the CRC32s recorded at write
    time: (notes, problems, files checked)."""
    m = root / MANIFEST
    if not m.is_file():
        return [f"no {MANIFEST}: not written by nanokern, checked structure only"], [], 0
    try:
        files = json.loads(m.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return [], [f"{m}: unreadable manifest"], 0
    problems, checked = [], 0
    for rel, entry in files.items():
        f = root / rel
        if not f.is_file():
            problems.append(f"{f}: missing (listed in {MANIFEST})")
            continue
        if f.stat().st_size != entry["size"]:
            problems.append(f"{f}: {f.stat().st_size} bytes, {entry['size']} when written")
            continue
        with open(f, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            header_len = min(t["offset"] for t in entry["tensors"].values()) if entry["tensors"] else len(mm)
            if crc32(mm[:header_len]) != entry["header_crc32"]:
                problems.append(f"{f}: header bytes changed since written")
            for name, t in entry["tensors"].items():
                with memoryview(mm) as mv:
                    crc = crc32(mv[t["offset"] : t["offset"] + t["nbytes"]])
                if crc != t["crc32"]:
                    problems.append(f"{f}: tensor {name}: bytes changed since written (CRC32 mismatch)")
        checked += 1
    return [], problems, checked
