"""Will the output fit? The plan knows every output byte before the first one is written."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from nanokern.errors import NanokernError
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
    """Raise one line naming the filesystem that will hold dst when `sizes` do not fit in it."""
    place = _existing(Path(dst).parent)
    need = needed_bytes(sizes)
    free = free_bytes(place)
    if need > free:
        mount = _mount_point(place)
        where = f"{place} (filesystem at {mount})" if mount != place else str(place)
        raise NanokernError(f"not enough free space for {Path(dst).name}: needs {_gb(need)}, {_gb(free)} free; "
                            f"nothing was written", where)


def _gb(n: int) -> str:
    return human_bytes(n)
