"""The one exception type users see: a file and what is wrong with it."""

from __future__ import annotations

import os


class NanokernError(Exception):
    """A problem with an input or output, reported as one line naming the file."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class OutOfSpace(NanokernError):
    """Not enough free space: found before writing (nothing written), or the disk filled up while
    writing (another writer took the space; the finished files are kept for a resume)."""
