"""Only regular files are read: a FIFO, a device or a socket where a shard or a config should be
is refused from its stat, before anything opens it (opening a FIFO blocks; /dev/zero never ends)."""

from __future__ import annotations

import os
import stat

from nanokern.errors import NanokernError

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def regular_size(path: str | os.PathLike) -> int:
    """The size of a regular file (symlinks followed); NanokernError naming it otherwise."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise NanokernError(f"cannot read: {e.strerror or e}", path) from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((what for test, what in _KINDS if test(st.st_mode)), "not a plain file")
        raise NanokernError(f"not a regular file ({kind}): refused without reading it", path)
    return st.st_size


def read_text(path: str | os.PathLike) -> str:
    """A regular file's text (UTF-8); NanokernError naming it when it is not one or cannot be read."""
    regular_size(path)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raise NanokernError("not a UTF-8 text file", path) from None
    except OSError as e:
        raise NanokernError(f"cannot read: {e.strerror or e}", path) from None
