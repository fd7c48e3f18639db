"""Write to a temporary name, rename on success: a crash never leaves output that looks done.

Temporary names all contain ``TMP_MARK`` so a later run can sweep what a killed one left.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO, Iterator

from core.diskfull import DISK_FULL_ERRNOS, DiskFull

TMP_MARK = ".tmp-"


def tmp_name(final: Path) -> Path:
    """A sibling of ``final`` that no finished output can be mistaken for."""
    return final.with_name(f".{final.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(final: Path, mode: int = 0o600) -> Iterator[BinaryIO]:
    """Yield a binary file handle; on success its contents become ``final`` atomically.

    The data is fsynced before the rename and the folder after it, so ``final`` is whole
    or absent even after a power cut. On an exception nothing is left behind.

    Raises:
        DiskFull: no room for the file (naming ``final``: a write to a file object says
            no file name of its own).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(final)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if (isinstance(exc, OSError) and not isinstance(exc, DiskFull)
                and exc.errno in DISK_FULL_ERRNOS):
            named = exc.filename if exc.filename not in (None, str(tmp)) else final
            raise DiskFull(named, exc.errno) from exc
        raise
    _fsync_dir(final.parent)


def atomic_write_bytes(final: Path, data: bytes, mode: int = 0o600) -> Path:
    """Write ``data`` to ``final`` atomically (temp file, fsync, rename)."""
    with atomic_file(final, mode) as fh:
        fh.write(data)
    return final


def atomic_write_text(final: Path, text: str, mode: int = 0o600) -> Path:
    return atomic_write_bytes(final, text.encode("utf-8"), mode)


@contextlib.contextmanager
def atomic_dir(final: Path, mode: int = 0o700) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``final`` whole.

    On an exception the temporary folder is removed and ``final`` is left as it was.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(final)
    tmp.mkdir(mode=mode)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        # Rename the old one aside first so there is never a moment with no folder at all
        # being replaced by a half-removed one.
        old = tmp_name(final)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


def sweep_tmp(folder: Path) -> list[Path]:
    """Remove temporary outputs a killed run left in ``folder`` (recursively); return them."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in sorted(folder.rglob(f"*{TMP_MARK}*"), key=lambda p: len(p.parts)):
        if not path.name.startswith(".") or TMP_MARK not in path.name:
            continue
        if any(parent in removed for parent in path.parents):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        removed.append(path)
    return removed
