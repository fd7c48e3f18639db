"""The journal in the memory: entries, their vectors, and the clips recorded near each one.

An entry is one line of a day's journal (or one ``sleep.py journal add``): its date, line,
optional time of day, text and origin (``file`` or ``cli``). Its identity is a content hash
of (date, time, text, which repeat of that same line it is), so a night run twice, or a
journal read again after a line was added, finds the entries it already has instead of
adding them again; only the line number is updated.

Entries are not clips, so their vectors do not go through ``shard_rows`` (whose rows name
a clip): each (space, model version, date) has one shard file in the format of
:mod:`memory.shards` (the same folders under ``memory/embeddings/``), a
:class:`JournalShard` row, and a :class:`JournalVector` row per vector naming its entry.
Writes follow :func:`memory.store.write_embeddings`: the file first, then one transaction
that replaces the key's rows; an entry deleted takes its vector rows along (the doctor then
compacts the shard). Journals are small: search is exact cosine over every shard in range.
"""
from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import asdict, dataclass

import numpy as np
from sqlalchemy import (
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    delete,
    insert,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.lock import held
from core.paths import Paths
from memory import shards
from memory.db import Base
from memory.media import middle_frames
from memory.schema import Clip, Source

ORIGINS = ("file", "cli")


class JournalEntry(Base):
    __tablename__ = "journal_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    date: Mapped[str] = mapped_column(String(10), index=True)  # YYYY-MM-DD, the journal's day
    line: Mapped[int | None] = mapped_column(Integer, nullable=True)  # in the day's journal file
    at: Mapped[str | None] = mapped_column(String(5), nullable=True)  # HH:MM, when given
    text: Mapped[str] = mapped_column(Text)
    origin: Mapped[str] = mapped_column(String(8))  # file | cli
    content_hash: Mapped[str] = mapped_column(String(64))
    added_at: Mapped[dt.datetime] = mapped_column(DateTime, default=dt.datetime.now)

    __table_args__ = (UniqueConstraint("date", "content_hash"),)


class JournalShard(Base):
    """One shard file of entry vectors: the ``Shard`` of a (space, model version, date)."""

    __tablename__ = "journal_shards"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    space: Mapped[str] = mapped_column(String(32))  # text | text_sae
    model_version: Mapped[str] = mapped_column(String(128))
    date: Mapped[str] = mapped_column(String(10), index=True)
    path: Mapped[str] = mapped_column(Text)  # relative to the root; unique per write
    rows: Mapped[int] = mapped_column(Integer)
    dim: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=dt.datetime.now)

    __table_args__ = (UniqueConstraint("space", "model_version", "date"),)


class JournalVector(Base):
    __tablename__ = "journal_vectors"

    shard_id: Mapped[int] = mapped_column(ForeignKey("journal_shards.id", ondelete="CASCADE"), primary_key=True)
    row: Mapped[int] = mapped_column(Integer, primary_key=True)  # index in the .npy
    entry_id: Mapped[int] = mapped_column(ForeignKey("journal_entries.id", ondelete="CASCADE"), index=True)


@dataclass(frozen=True)
class NewEntry:
    """An entry to store: its line in the journal file (``None``: not in a file), time, text, origin."""

    line: int | None
    at: str | None  # HH:MM
    text: str
    origin: str = "file"


@dataclass(frozen=True)
class Entry:
    """A stored entry."""

    id: int
    date: str
    line: int | None
    at: str | None
    text: str
    origin: str

    @property
    def when(self) -> dt.datetime | None:
        """The entry's wall-clock time (its date and time), or ``None`` without a time."""
        if self.at is None:
            return None
        return dt.datetime.combine(dt.date.fromisoformat(self.date), dt.time.fromisoformat(self.at))

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class NearbyClip:
    """A clip recorded near an entry's time; ``minutes`` is its start minus the entry's time."""

    clip_id: int
    date: str
    wall_start: str
    minutes: float
    source_path: str
    start_s: float
    end_s: float
    frame_path: str | None

    def as_dict(self) -> dict:
        return asdict(self)


def _entry(row: JournalEntry) -> Entry:
    return Entry(row.id, row.date, row.line, row.at, row.text, row.origin)


def content_hash(date: str, at: str | None, text: str, repeat: int) -> str:
    """The identity of an entry: the ``repeat``-th (0-based) line of ``date`` with this time and text."""
    return hashlib.sha256(f"{date}\n{at or ''}\n{text}\n{repeat}".encode()).hexdigest()


def sync_day(engine: Engine, date: str, entries: list[NewEntry], *, prune_before: dt.datetime | None) -> dict:
    """Make the stored entries of ``date`` agree with ``entries`` (a day's journal, in file order).

    Entries already stored (same content hash) keep their id and origin and get their new
    line number; the others are added. One transaction.

    Args:
        engine: the memory database.
        date: the day, ``YYYY-MM-DD``.
        entries: what the journal holds now.
        prune_before: also delete the day's stored entries that are not in ``entries`` (a
            line the person removed from the file), with their vectors, if they were stored
            before this time (when the file was read: an entry that ``journal add`` stored
            meanwhile is not in what was read, yet stays); ``None`` deletes nothing.
    Returns:
        ``{"ids": [id per entry], "added": n, "removed": n}``.
    """
    seen: dict[tuple, int] = {}
    hashes = []
    for e in entries:
        if e.origin not in ORIGINS:
            raise ValueError(f"origin {e.origin!r}: expected one of {ORIGINS}")
        key = (e.at, e.text)
        hashes.append(content_hash(date, e.at, e.text, seen.get(key, 0)))
        seen[key] = seen.get(key, 0) + 1
    with Session(engine) as session, session.begin():
        stored = {row.content_hash: row for row in session.scalars(
            select(JournalEntry).where(JournalEntry.date == date))}
        ids, added = [], 0
        for e, digest in zip(entries, hashes):
            row = stored.get(digest)
            if row is None:
                row = JournalEntry(date=date, line=e.line, at=e.at, text=e.text, origin=e.origin,
                                   content_hash=digest)
                session.add(row)
                session.flush()
                stored[digest] = row
                added += 1
            elif row.line != e.line:
                row.line = e.line
            ids.append(row.id)
        wanted = set(hashes)
        gone = [row.id for digest, row in stored.items()
                if prune_before is not None and digest not in wanted and row.added_at < prune_before]
        if gone:
            session.execute(delete(JournalEntry).where(JournalEntry.id.in_(gone)))
    return {"ids": ids, "added": added, "removed": len(gone)}


def day_entries(engine: Engine, date: str) -> list[Entry]:
    """The stored entries of ``date``, in journal order (time, then line)."""
    return all_entries(engine, date, date)


def all_entries(engine: Engine, date_from: str | None = None, date_to: str | None = None) -> list[Entry]:
    """Every stored entry (optionally within a date range), by date, time and line."""
    query = select(JournalEntry)
    if date_from:
        query = query.where(JournalEntry.date >= date_from)
    if date_to:
        query = query.where(JournalEntry.date <= date_to)
    with Session(engine) as session:
        rows = [_entry(r) for r in session.scalars(query)]
    return sorted(rows, key=lambda e: (e.date, e.at or "", e.line or 0, e.id))


def entries_by_id(engine: Engine, ids) -> dict[int, Entry]:
    with Session(engine) as session:
        return {r.id: _entry(r) for r in session.scalars(select(JournalEntry).where(
            JournalEntry.id.in_([int(i) for i in ids])))}


# --- vectors ---------------------------------------------------------------------------------

def write_entry_vectors(engine: Engine, paths: Paths, *, space: str, model_version: str, date: str,
                        entry_ids: list[int], vectors: np.ndarray) -> JournalShard:
    """Store the vectors of one (space, model_version, date); replaces an earlier write of that key.

    Args:
        engine: the memory database.
        paths: the root's layout.
        space: ``text`` or ``text_sae``.
        model_version: e.g. ``minilm@53aa51172d14`` or ``textsae@2026-01-15``.
        date: the entries' day (every entry must be of that day).
        entry_ids: one entry per vector, same order.
        vectors: ``(N, D)``; normalised here and stored in the shard format.
    Raises:
        ValueError: bad names or shapes, zero vectors, or an entry of another day.
    """
    shards.check_key(space, model_version, date)
    unit = shards.normalise(vectors)
    if len(entry_ids) != len(unit) or len(unit) == 0:
        raise ValueError(f"{len(entry_ids)} entries for {len(unit)} vectors (need at least one)")
    with held(paths.shard_lock):  # a doctor running beside `journal add` sees the file with its row
        return _store_entry_vectors(engine, paths, space, model_version, date, entry_ids, unit)


def _store_entry_vectors(engine: Engine, paths: Paths, space: str, model_version: str, date: str,
                         entry_ids: list[int], unit: np.ndarray) -> JournalShard:
    final = shards.write_shard(paths, space=space, model_version=model_version, date=date, unit=unit).path
    rel = str(final.relative_to(paths.root))
    old_path = None
    try:
        with Session(engine) as session, session.begin():
            days = set(session.scalars(select(JournalEntry.date).where(
                JournalEntry.id.in_([int(i) for i in entry_ids]))))
            if days != {date}:
                raise ValueError(f"entries of {sorted(days) or 'no day'} given for the shard of {date}")
            old = session.scalars(select(JournalShard).where(
                JournalShard.space == space, JournalShard.model_version == model_version,
                JournalShard.date == date)).first()
            if old is not None:
                old_path = old.path
                session.execute(delete(JournalShard).where(JournalShard.id == old.id))  # cascades to its rows
            shard = JournalShard(space=space, model_version=model_version, date=date, path=rel,
                                 rows=len(unit), dim=unit.shape[1])
            session.add(shard)
            session.flush()
            session.execute(insert(JournalVector), [{"shard_id": shard.id, "row": i, "entry_id": int(e)}
                                                    for i, e in enumerate(entry_ids)])
    except BaseException:
        final.unlink(missing_ok=True)
        raise
    if old_path and old_path != rel:
        (paths.root / old_path).unlink(missing_ok=True)
    return shard


def _shards(session: Session, space: str, model_version: str, date_from: str | None = None,
            date_to: str | None = None) -> list[JournalShard]:
    query = select(JournalShard).where(JournalShard.space == space, JournalShard.model_version == model_version)
    if date_from:
        query = query.where(JournalShard.date >= date_from)
    if date_to:
        query = query.where(JournalShard.date <= date_to)
    return list(session.scalars(query.order_by(JournalShard.date)))


def load_entry_vectors(engine: Engine, paths: Paths, *, space: str, model_version: str,
                       date_from: str | None = None, date_to: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The stored vectors of a (space, version), optionally within a date range.

    Returns:
        ``(entry_ids (N,), vectors (N, D) float32)``; rows whose entry is gone are left out.
    """
    for attempt in range(1, 4):
        ids, blocks = [], []
        with Session(engine) as session:
            # Shards and rows from one state of the database (a snapshot): a `journal add`
            # replacing a day's shard removes the old file after its commit.
            session.connection().exec_driver_sql("BEGIN")
            try:
                for shard in _shards(session, space, model_version, date_from, date_to):
                    rows = session.execute(select(JournalVector.row, JournalVector.entry_id)
                                           .where(JournalVector.shard_id == shard.id)
                                           .order_by(JournalVector.row)).all()
                    if rows:
                        blocks.append(shards.read_rows(paths, shard, [r for r, _ in rows]))
                        ids.extend(e for _, e in rows)
            except FileNotFoundError:
                if attempt == 3:
                    raise
                continue  # replaced after the snapshot began: read the new state
        break
    if not blocks:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    return np.array(ids, np.int64), np.concatenate(blocks)


def versions(engine: Engine, space: str) -> list[str]:
    """The model versions of ``space`` that hold vectors, oldest write first."""
    with Session(engine) as session:
        found = session.execute(select(JournalShard.model_version, JournalShard.id)
                                .where(JournalShard.space == space).order_by(JournalShard.id)).all()
    return list(dict.fromkeys(v for v, _ in found))


def drop_version(engine: Engine, paths: Paths, space: str, model_version: str) -> int:
    """Remove a (space, version)'s rows, then its files. Returns the shards dropped."""
    with Session(engine) as session, session.begin():
        gone = list(session.scalars(select(JournalShard.path).where(
            JournalShard.space == space, JournalShard.model_version == model_version)))
        session.execute(delete(JournalShard).where(JournalShard.space == space,
                                                   JournalShard.model_version == model_version))
    shards.remove_version_files(paths, space, model_version)
    return len(gone)


def search_entries(engine: Engine, paths: Paths, *, space: str, model_version: str, query: np.ndarray,
                   topk: int = 10, date_from: str | None = None,
                   date_to: str | None = None) -> list[tuple[Entry, float]]:
    """The entries nearest to ``query`` (exact cosine), best first.

    Args:
        query: a ``(D,)`` vector of the same space and version (normalised here).
        topk: how many at most.
        date_from, date_to: ``YYYY-MM-DD`` bounds of the entries' days, inclusive.
    Raises:
        ValueError: the query's width is not the version's.
    """
    ids, vectors = load_entry_vectors(engine, paths, space=space, model_version=model_version,
                                      date_from=date_from, date_to=date_to)
    if len(ids) == 0:
        return []
    q = shards.normalise(np.asarray(query, np.float32).reshape(1, -1))[0]
    if q.shape[0] != vectors.shape[1]:
        raise ValueError(f"a {q.shape[0]}-d query for {model_version}'s {vectors.shape[1]}-d vectors")
    scores = vectors @ q
    order = np.argsort(-scores, kind="stable")[:topk]
    found = entries_by_id(engine, ids[order])
    return [(found[int(ids[i])], round(float(scores[i]), 6)) for i in order if int(ids[i]) in found]


def unembedded(engine: Engine, space: str, model_version: str, date: str | None = None) -> list[Entry]:
    """Entries (of ``date``, or all) that have no vector in the (space, version)."""
    with Session(engine) as session:
        have = select(JournalVector.entry_id).join(JournalShard, JournalShard.id == JournalVector.shard_id).where(
            JournalShard.space == space, JournalShard.model_version == model_version)
        query = select(JournalEntry).where(~JournalEntry.id.in_(have))
        if date:
            query = query.where(JournalEntry.date == date)
        return [_entry(r) for r in session.scalars(query.order_by(JournalEntry.date, JournalEntry.id))]


# --- the clips around an entry ---------------------------------------------------------------

def clips_near(engine: Engine, when: dt.datetime, minutes: float, limit: int = 20) -> list[NearbyClip]:
    """Clips recorded within ``minutes`` of ``when`` (a clip counts if any part of it falls in
    the window), nearest first.

    Args:
        engine: the memory database.
        when: the entry's wall-clock time (naive local, as clips store theirs).
        minutes: the half-width of the window.
        limit: at most this many clips.
    """
    window = dt.timedelta(minutes=minutes)
    # A clip that starts up to an hour before the window may still reach into it.
    with Session(engine) as session:
        rows = session.execute(
            select(Clip.id, Clip.date, Clip.wall_start, Clip.start_s, Clip.end_s, Source.path)
            .join(Source, Source.id == Clip.source_id)
            .where(Clip.wall_start.is_not(None), Clip.wall_start >= when - window - dt.timedelta(hours=1),
                   Clip.wall_start <= when + window)).all()
        near = []
        for clip_id, date, start, start_s, end_s, source in rows:
            end = start + dt.timedelta(seconds=end_s - start_s)
            if end < when - window:
                continue
            gap = 0.0 if start <= when <= end else min(abs((start - when).total_seconds()),
                                                       abs((end - when).total_seconds()))
            near.append((gap, start, clip_id, date, start_s, end_s, source))
        near.sort()
        near = near[:limit]
        frames = middle_frames(session, [n[2] for n in near]) if near else {}
    return [NearbyClip(clip_id, date, start.isoformat(), round((start - when).total_seconds() / 60, 2), source,
                       start_s, end_s, frames.get(clip_id))
            for _, start, clip_id, date, start_s, end_s, source in near]

