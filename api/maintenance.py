"""Forget a day and check the memory: :mod:`memory.forget` and :mod:`memory.doctor` for callers
that hold a root folder and a date (``sleep.py forget`` and ``sleep.py doctor`` call these)."""
from __future__ import annotations

from api.args import Day, Root, date_of, paths_of
import memory


def plan_forget(root: Root, date: Day) -> dict:
    """What :func:`forget` would remove, without removing anything.

    Args:
        root: the folder holding ``data/`` and ``memory/`` (or its :class:`~core.paths.Paths`).
        date: the day, a ``datetime.date`` or ``"YYYY-MM-DD"``.
    Returns:
        ``{"date", "database": {table: rows}, "files": [paths relative to the root]}``.
    Raises:
        UsageError: ``date`` is not a calendar date.
    """
    return memory.plan_forget(paths_of(root), date_of(date, "date"))


def forget(root: Root, date: Day) -> dict:
    """Remove one day completely: its recordings, clips, frames, audio, embeddings, database
    rows and report. Other days and the model checkpoints are kept.

    Args:
        root: the folder holding ``data/`` and ``memory/`` (or its :class:`~core.paths.Paths`).
        date: the day, a ``datetime.date`` or ``"YYYY-MM-DD"``.
    Returns:
        what was removed, in :func:`plan_forget`'s form.
    Raises:
        UsageError: ``date`` is not a calendar date.
        LockHeld: a night (or another forget) is running on this root.
    """
    return memory.forget_day(paths_of(root), date_of(date, "date"))


def doctor(root: Root, *, repair: bool = False, workers: int | None = None, read_data: bool = False) -> dict:
    """Check every shard against its database rows and every file the database names.

    Args:
        root: the folder holding ``memory/`` (or its :class:`~core.paths.Paths`).
        repair: make database and files agree (drop rows whose files are gone, delete files
            no row knows, compact shards).
        read_data: read every shard against its checksums (by default each is read once,
            the first time a doctor meets it).
        workers: processes that share the scans; default one more than the cores for a large memory
            (see :func:`memory.doctor.doctor`). The report does not depend on it.
    Returns:
        ``{"problems": [...], "repaired": [...], "notes": [...], "ok": bool}``; ``ok`` is
        false while problems remain; notes (leftovers of interrupted writes) are harmless.
    Raises:
        LockHeld: a night is running (its half-written files would look like problems).
    """
    return memory.doctor(paths_of(root), repair=repair, workers=workers, read_data=read_data)


def is_unencrypted(root: Root) -> bool:
    """Whether the memory under ``root`` holds a plaintext database (made without encryption,
    or a ``key seal`` stopped before its last step)."""
    from memory.sealing import database_is_plain

    return database_is_plain(paths_of(root))


def seal(root: Root, master_key: bytes) -> dict:
    """Encrypt an existing memory in place with ``master_key`` (``sleep.py key seal``):
    every file sleep wrote, then the database; safe to stop and run again.

    The caller holds the root's night lock and has made or unlocked the key.

    Returns:
        ``{"files", "already", "bytes", "database"}`` (:class:`memory.sealing.Sealed`).
    Raises:
        SealingError: another process has the database open.
    """
    from dataclasses import asdict

    from core.vault import register
    from memory.sealing import seal_memory

    paths = paths_of(root)
    return asdict(seal_memory(paths, register(paths.root, master_key)))
