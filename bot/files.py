"""Reading the small files a user points the bot at (its configuration, its secrets), safely.

A path can name anything: a FIFO, whose opening blocks until a writer comes (for ever), a
device such as /dev/zero, which never ends, or a file far larger than any configuration.
`read_small_file` refuses all of them before reading, so a mistaken path is a one-line
error, never a hang or a full memory.
"""

from __future__ import annotations

import errno
import stat
from pathlib import Path

__all__ = ["FileTooLargeError", "NotRegularFileError", "read_small_file"]


class NotRegularFileError(OSError):
    """The path names a device, a pipe or a socket, not a file."""


class FileTooLargeError(OSError):
    """The file is larger than the reader's bound."""


def read_small_file(path: Path, limit: int) -> bytes:
    """The bytes of `path`, a regular file (symbolic links followed) of at most `limit`
    bytes. Raises what `open` raises (FileNotFoundError, IsADirectoryError,
    PermissionError, ...), NotRegularFileError or FileTooLargeError."""
    mode = path.stat().st_mode
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
    if not stat.S_ISREG(mode):
        raise NotRegularFileError(errno.EINVAL, "not a regular file", str(path))
    with path.open("rb") as stream:
        raw = stream.read(limit + 1)  # a file that grew since the check is still bounded
    if len(raw) > limit:
        raise FileTooLargeError(errno.EFBIG, f"larger than {limit} bytes", str(path))
    return raw
