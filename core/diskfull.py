"""A write that failed for want of space, said in one line that names what was being written.

A night on a full disk fails wherever its next write lands: a frame FFmpeg extracts, a
checkpoint, a shard, the database. Left alone, each shows as a traceback ending in
``[Errno 28] No space left on device`` (or SQLite's ``database or disk is full``) with no
path. :class:`DiskFull` is that error with the path, raised where the path is known
(:func:`core.atomic.atomic_file`, ingest's FFmpeg pass); :func:`disk_full_in` finds one in
any exception's chain, so the night runner can stop and say it.

A file size limit (``RLIMIT_FSIZE``, systemd's ``LimitFSIZE=``; ``EFBIG``) and a quota
(``EDQUOT``) are the same to the person reading it: there is no room for that file.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from core.errors import SleepError

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})

# How FFmpeg says each of those (its C library's strerror: glibc's, or musl's for a quota).
_FFMPEG_SAYS = {errno.ENOSPC: ("No space left on device",), errno.EFBIG: ("File too large",),
                errno.EDQUOT: ("Disk quota exceeded", "Quota exceeded")}

# SQLite's result code for a write that found no room (a short write); Python 3.11 names it.
_SQLITE_FULL = "SQLITE_FULL"


class DiskFull(SleepError, OSError):
    """No room to write ``filename``: exit 1; the next run on free space resumes the night.

    An :class:`OSError` too (``errno``, ``strerror``, ``filename``), so code that already
    handles a failed write handles this one the same way.
    """

    def __init__(self, path: str | os.PathLike, code: int = errno.ENOSPC):
        super().__init__(code, os.strerror(code), str(path))

    def __str__(self) -> str:
        return f"disk full writing {self.filename} ({self.strerror}): free space and rerun"

    def __reduce__(self):  # rebuilt from (path, code) when it crosses a process pool
        return (type(self), (self.filename, self.errno))


def _chain(exc: BaseException):
    """``exc`` and every exception it was raised from or during (SQLAlchemy's ``orig`` too)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [current.__cause__, current.__context__, getattr(current, "orig", None)]


def disk_full_in(exc: BaseException, *, database: Path, folder: Path) -> DiskFull | None:
    """The :class:`DiskFull` behind ``exc``, or ``None`` when it is another failure.

    Args:
        exc: what a stage (or the night around it) raised.
        database: named when SQLite found no room.
        folder: named when the failed write did not say which file it was.
    """
    for cause in _chain(exc):
        if isinstance(cause, DiskFull):
            return cause
        if isinstance(cause, OSError) and cause.errno in DISK_FULL_ERRNOS:
            return DiskFull(cause.filename or folder, cause.errno)
        if getattr(cause, "sqlite_errorname", None) == _SQLITE_FULL:
            return DiskFull(database, errno.ENOSPC)
    return None


def ffmpeg_disk_full(stderr: str) -> int | None:
    """The errno of a write FFmpeg could not make for want of space, from its stderr, or ``None``."""
    for code, phrases in _FFMPEG_SAYS.items():
        if any(phrase in stderr for phrase in phrases):
            return code
    return None
