"""The journal from Python: ``journal_query(root, "coffee with my sister")`` returns what
``sleep.py query --journal "..." --json`` prints; ``journal_add`` is ``sleep.py journal add``.

A query is embedded with all-MiniLM-L6-v2 and searched among the entries of the same
weights' version (space ``text``, exact cosine); each entry that has a time comes with the
clips recorded within ``journal.window_minutes`` of it.
"""
from __future__ import annotations

import datetime as dt
import numbers
import os
from dataclasses import asdict, dataclass, field

from api.args import Day, Root, config_of, date_of, memory_of, paths_of
from core.config import SleepConfig, parse_clock_time
from core.device import resolve_device
from core.errors import ConfigError, UsageError
from core.vault import unlock


@dataclass(frozen=True)
class JournalHit:
    """One journal entry found, how close it is, and the clips recorded around its time.

    ``clips`` are :class:`memory.NearbyClip` dicts (clip id, day, wall-clock start, minutes
    from the entry, source file and offset, a frame), nearest first; empty for an entry
    without a time.
    """

    entry_id: int
    date: str
    at: str | None
    text: str
    origin: str
    score: float
    model_version: str
    clips: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def journal_query(root: Root, text: str, *, topk: int = 10, date_from: Day | None = None,
                  date_to: Day | None = None, window_minutes: float | None = None,
                  config: SleepConfig | str | os.PathLike | None = None,
                  overrides: list[str] | None = None) -> list[JournalHit]:
    """The journal entries nearest in meaning to ``text``, best first, each with its clips.

    Args:
        root: the folder holding ``memory/`` (or its :class:`~core.paths.Paths`).
        text: what to look for, e.g. ``"coffee with my sister"``.
        topk: how many entries, at least 1.
        date_from: first day searched, a ``datetime.date`` or ``"YYYY-MM-DD"``.
        date_to: last day searched, likewise.
        window_minutes: clips within this many minutes of an entry's time (default
            ``journal.window_minutes``).
        config: a :class:`SleepConfig`, or a YAML file (``None``: the default config).
        overrides: ``key.path=value`` strings applied to the config file.
    Returns:
        up to ``topk`` :class:`JournalHit` (``hit.as_dict()`` is one ``--json`` entry).
    Raises:
        UsageError: a bad argument, no memory yet, no journal embedded yet, the text model
            is not installed, or a sealed memory's passphrase is missing or wrong.
        ConfigError: the config file is invalid.
    """
    if not isinstance(text, str) or not text.strip():
        raise UsageError("--journal: give the words to look for")
    if isinstance(topk, bool) or not isinstance(topk, numbers.Integral) or topk < 1:
        raise UsageError(f"--topk {topk!r}: expected a whole number of at least 1")
    first = date_of(date_from, "--from").isoformat() if date_from is not None else None
    last = date_of(date_to, "--to").isoformat() if date_to is not None else None
    cfg = config_of(config, overrides)
    window = cfg.journal.window_minutes if window_minutes is None else float(window_minutes)
    if window <= 0:
        raise UsageError(f"window_minutes {window_minutes}: must be positive")
    paths = memory_of(root)
    unlock(paths.root, cfg.memory)  # a sealed memory: its key, before anything is read

    from memory import clips_near, open_database, search_entries
    from stages.journal import SPACE, load_encoder

    try:
        encoder = load_encoder(resolve_device(cfg.runtime.device))
    except ConfigError as exc:
        raise UsageError(f"--journal: {exc}") from None
    engine = open_database(paths.database)
    try:
        found = search_entries(engine, paths, space=SPACE, model_version=encoder.version,
                               query=encoder.embed([text])[0], topk=int(topk), date_from=first, date_to=last)
        if not found and first is None and last is None:
            from memory.journal import versions

            if encoder.version not in versions(engine, SPACE):
                raise UsageError(f"--journal: no journal entries embedded with {encoder.version} yet; add "
                                 f"data/raw/DATE/journal.md and run a night, or use `sleep.py journal add`")
        hits = []
        for entry, score in found:
            clips = [] if entry.when is None else [
                c.as_dict() for c in clips_near(engine, entry.when, window, cfg.journal.clips_per_entry)]
            hits.append(JournalHit(entry.id, entry.date, entry.at, entry.text, entry.origin, score,
                                   encoder.version, clips))
    finally:
        engine.dispose()
    return hits


def journal_add(root: Root, text: str, *, at: str | dt.time | None = None, date: Day | None = None,
                config: SleepConfig | str | os.PathLike | None = None,
                overrides: list[str] | None = None) -> dict:
    """Append one entry to the day's ``journal.md`` and store it, embedded at once when the text
    model is installed (searchable before the night).

    Args:
        root: the folder holding ``data/`` and ``memory/``.
        text: the entry.
        at: when it happened, ``"HH:MM"`` or a ``datetime.time`` (``None``: no time).
        date: the day it belongs to (default today).
        config: a :class:`SleepConfig`, or a YAML file (``None``: the default config).
        overrides: ``key.path=value`` strings applied to the config file.
    Returns:
        ``{"date", "line", "at", "text", "entry_id", "file", "embedded", "note"}``.
    Raises:
        UsageError: an empty text, a bad time or date; a sealed memory whose passphrase is
            missing or wrong, or a config that disagrees with the memory on encryption.
    """
    from stages.journal import add_entry

    if not isinstance(text, str):
        raise UsageError(f"journal add: {text!r} is not text")
    if isinstance(at, str):
        try:
            at = dt.time(*parse_clock_time(at))
        except ValueError as exc:
            raise UsageError(f"--at {at}: {exc}") from None
    elif at is not None and not isinstance(at, dt.time):
        raise UsageError(f"--at {at!r}: expected HH:MM")
    day = dt.date.today() if date is None else date_of(date, "--date")
    cfg = config_of(config, overrides)
    paths = paths_of(root)
    unlock(paths.root, cfg.memory)  # a sealed memory: the journal and the database are sealed
    # No night lock: adding a line while a night runs is safe (the file is replaced whole, and
    # the night keeps entries stored after it read the file).
    return add_entry(paths, cfg.journal, text, at, day, resolve_device(cfg.runtime.device))
