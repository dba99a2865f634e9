"""Will the output fit? The plan knows every output byte before the first one is written."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from nanokern.errors import OutOfSpace
from nanokern.io.units import human_bytes

BLOCK = 4096
SLACK = 256 << 10  # directories, the manifest, filesystem metadata

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def needed_bytes(sizes) -> int:
    """Bytes the files take on disk: each rounded up to whole blocks (O_DIRECT and fallocate do)."""
    return sum(-(-s // BLOCK) * BLOCK + BLOCK for s in sizes) + SLACK  # + a block of metadata per file


def _existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _mount_point(path: Path) -> Path:
    dev = path.stat().st_dev
    while path != path.parent and path.parent.stat().st_dev == dev:
        path = path.parent
    return path


def free_bytes(path: str | os.PathLike) -> int:
    st = os.statvfs(_existing(Path(path)))
    return st.f_bavail * st.f_frsize


def check_fits(dst: str | os.PathLike, sizes) -> None:
    """Raise OutOfSpace, one line naming dst and the filesystem that will hold it, when `sizes`
    do not fit in it."""
    place = _existing(Path(dst).parent)
    need = needed_bytes(sizes)
    free = free_bytes(place)
    if need > free:
        raise OutOfSpace(f"not enough free space: needs {human_bytes(need)}, {human_bytes(free)} free on "
                         f"{_mount_point(place)}; nothing was written", dst)
