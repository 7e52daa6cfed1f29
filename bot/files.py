"""Reading the small files a user points the bot at (its configuration, its secrets), safely.

A path can name anything: a FIFO, whose opening blocks until a writer comes (for ever), a
device such as /dev/zero, which never ends, or a file far larger than any configuration.
`read_small_file` refuses all of them before reading them, so a mistaken path is a one-line
error, never a hang or a full memory.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["FileTooLargeError", "NotRegularFileError", "file_size", "read_small_file"]


class NotRegularFileError(OSError):
    """The path names a device, a pipe or a socket, not a file."""


class FileTooLargeError(OSError):
    """The file is larger than the reader's bound."""


def file_size(path: Path) -> int:
    """The size of the file at `path` in bytes (0 if there is none, or it cannot be read)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def read_small_file(path: Path, limit: int) -> bytes:
    """The bytes of `path`, a regular file (symbolic links followed) of at most `limit`
    bytes. Raises what `open` raises (FileNotFoundError, IsADirectoryError,
    PermissionError, ...), NotRegularFileError or FileTooLargeError.

    Opened without blocking (a FIFO opens at once, with no writer) and then looked at, so
    nothing swapped in between the look and the open can hang it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        _check(os.fstat(fd), path, limit)
    except OSError:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as stream:
        raw = stream.read(limit + 1)  # a file that grew since the look is still bounded
    if len(raw) > limit:
        raise FileTooLargeError(errno.EFBIG, f"larger than {limit} bytes", str(path))
    return raw


def _check(info: os.stat_result, path: Path, limit: int) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
    if not stat.S_ISREG(info.st_mode):
        raise NotRegularFileError(errno.EINVAL, "not a regular file", str(path))
    if info.st_size > limit:
        raise FileTooLargeError(errno.EFBIG, f"larger than {limit} bytes", str(path))
