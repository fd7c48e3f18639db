"""Model versions from Python: what ``sleep.py memory versions`` and ``memory reembed`` print, as data.

Every night writes new versions of the spaces; :func:`versions` lists them with how much
of the memory each covers and which one queries read; :func:`reembed` moves earlier days
into a version on demand (what the night's ``reembed`` stage does within its time budget).
"""
from __future__ import annotations

import datetime as dt
import logging
import os

from api.args import Root, config_of, memory_of
from core.config import SleepConfig
from core.device import resolve_device
from core.errors import UsageError
from core.lock import NightLock


def versions(root: Root) -> list[dict]:
    """Every version of every space, its coverage, and which one is active.

    Args:
        root: the folder holding ``memory/`` (or its :class:`~core.paths.Paths`).
    Returns:
        one dict per (space, version), as :func:`memory.version_table`: ``space``,
        ``version``, ``clips``, ``days``, ``days_total``, ``days_missing``,
        ``missing_clips``, ``complete``, ``active``, ``switched_at``.
    Raises:
        UsageError: no memory under ``root`` yet.
    """
    from memory import open_database, version_table

    paths = memory_of(root)
    engine = open_database(paths.database)
    try:
        return version_table(engine)
    finally:
        engine.dispose()


def reembed(root: Root, *, space: str | None = None, version: str | None = None,
            max_minutes: float | None = None, device: str | None = None,
            config: SleepConfig | str | os.PathLike | None = None,
            overrides: list[str] | None = None) -> dict:
    """Re-embed earlier days into a version now, and switch each space that becomes complete.

    Holds the root's night lock (never during a night). Safe to stop and run again: days
    already written are skipped and the rest get the same vectors an uninterrupted run writes.

    Args:
        root: the folder holding ``memory/`` and ``checkpoints/`` (or its :class:`Paths`).
        space: only this space (one of :data:`stages.reembed.SPACES`); ``None``: all of them.
        version: fill this version (``"jepa@2026-01-16"``; only its model's spaces); ``None``:
            each space's newest version.
        max_minutes: stop starting new days after this long; ``None``: no limit.
        device: ``cpu`` or ``cuda``; ``None`` takes ``runtime.device``.
        config: a :class:`SleepConfig`, or a YAML file (``None``: the default config).
        overrides: ``key.path=value`` strings applied to the config file.
    Returns:
        :func:`stages.reembed.reembed`'s result: per space the version, days done and left,
        clips, missing clips, seconds, coverage and the active version.
    Raises:
        UsageError: no memory yet, an unknown space, or a version the memory lacks.
        LockHeld: a night (or another maintenance command) is running on this root.
    """
    from memory import make_sessionmaker, open_database
    from stages import Night
    from stages.reembed import latest_targets, reembed as run_reembed, usable

    cfg = config_of(config, overrides)
    paths = memory_of(root)
    if max_minutes is not None and max_minutes < 0:
        raise UsageError(f"--max-minutes {max_minutes}: must be at least 0")
    with NightLock(paths.lock, "memory reembed"):
        engine = open_database(paths.database)
        try:
            night = Night(dt.date.today(), cfg, paths, engine, make_sessionmaker(engine),
                          resolve_device(device or cfg.runtime.device), logging.getLogger("sleep.reembed"))
            targets, notes = usable(night, latest_targets(night, space, version))
            return run_reembed(night, targets, max_minutes=max_minutes, notes=notes)
        finally:
            engine.dispose()
