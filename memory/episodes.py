"""Episodes and highlights of a day in the memory, and the day's clips in time order.

An episode is a run of consecutive clips of one day (``episodes``, with its clips in
``episode_clips``), a highlight one clip with its rank, score and reasons (``highlights``).
The ``episodes`` stage writes a day's rows with :func:`save_episodes` in one transaction that
replaces whatever the day had, so a rerun leaves no stale episode; ``forget`` removes them
with the day (:func:`day_counts`, :func:`delete_day`); a query asks which episode each hit
belongs to (:func:`episode_of`).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import (
    JSON,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    String,
    delete,
    func,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from memory.db import Base
from memory.keepsakes import KeepsakeRow
from memory.schema import AudioSegment, Clip, Source

_IN_CHUNK = 900  # SQLite's bound-parameter limit in older builds


class EpisodeRow(Base):
    __tablename__ = "episodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    date: Mapped[str] = mapped_column(String(10), index=True)
    index: Mapped[int] = mapped_column(Integer)  # 0, 1, ... in time order within the day
    first_clip_id: Mapped[int] = mapped_column(Integer)
    last_clip_id: Mapped[int] = mapped_column(Integer)
    start: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)  # wall time, when known
    end: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    start_s: Mapped[float] = mapped_column(Float)  # offset in its first recording
    end_s: Mapped[float] = mapped_column(Float)  # offset in its last recording
    clips: Mapped[int] = mapped_column(Integer)
    recordings: Mapped[list] = mapped_column(JSON)  # source paths (relative to the root), in order
    loudness: Mapped[list] = mapped_column(JSON)  # dBFS per clip (null: no sound)


class EpisodeClip(Base):
    __tablename__ = "episode_clips"

    episode_id: Mapped[int] = mapped_column(ForeignKey("episodes.id", ondelete="CASCADE"), primary_key=True)
    clip_id: Mapped[int] = mapped_column(ForeignKey("clips.id", ondelete="CASCADE"), primary_key=True, index=True)


class HighlightRow(Base):
    __tablename__ = "highlights"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    date: Mapped[str] = mapped_column(String(10), index=True)
    rank: Mapped[int] = mapped_column(Integer)  # 1 = first picked
    clip_id: Mapped[int] = mapped_column(ForeignKey("clips.id", ondelete="CASCADE"))
    score: Mapped[float] = mapped_column(Float)
    reasons: Mapped[list] = mapped_column(JSON)  # words, strongest first
    components: Mapped[dict] = mapped_column(JSON)  # {"prediction", "novelty", "loudness"}: the score's parts


@dataclass(frozen=True)
class TimelineClip:
    """One clip of the day, as the episodes stage reads it (paths relative to the root)."""

    clip_id: int
    source_path: str
    wall_start: dt.datetime | None  # the clip's own start on the wall clock, when known
    start_s: float
    end_s: float
    has_video: bool
    audio_path: str | None  # its 16 kHz WAV segment (None: no sound, or removed by retention)
    snippet_path: str | None  # its kept sound (memory/keep), outlives retention


@dataclass(frozen=True)
class NewEpisode:
    """An episode to store: its clips in time order, and their loudness."""

    clip_ids: tuple[int, ...]
    start: dt.datetime | None
    end: dt.datetime | None
    start_s: float
    end_s: float
    recordings: tuple[str, ...]
    loudness: tuple[float | None, ...]


@dataclass(frozen=True)
class NewHighlight:
    clip_id: int
    score: float
    reasons: tuple[str, ...]
    components: dict


def timeline(session: Session, date: str) -> list[TimelineClip]:
    """The day's clips of readable recordings in time order: by the recording's wall-clock
    start (recordings without one last, by path), then by offset within it."""
    rows = session.execute(
        select(Clip.id, Source.path, Source.wall_start, Clip.wall_start, Clip.start_s, Clip.end_s,
               Source.has_video, AudioSegment.path, KeepsakeRow.snippet)
        .join(Source, Source.id == Clip.source_id)
        .outerjoin(AudioSegment, AudioSegment.clip_id == Clip.id)
        .outerjoin(KeepsakeRow, KeepsakeRow.clip_id == Clip.id)
        .where(Clip.date == date, Source.status == "ok")).all()
    far = dt.datetime.max
    rows.sort(key=lambda r: (r[2] is None, r[2] or far, r[1], r[4]))
    return [TimelineClip(clip_id, path, clip_wall, start_s, end_s, bool(video), audio, snippet)
            for clip_id, path, _, clip_wall, start_s, end_s, video, audio, snippet in rows]


def save_episodes(engine: Engine, date: str, episodes: list[NewEpisode], highlights: list[NewHighlight]) -> None:
    """Replace ``date``'s episodes and highlights with these, in one transaction."""
    with Session(engine) as session, session.begin():
        delete_day(session, date)
        for index, ep in enumerate(episodes):
            row = EpisodeRow(date=date, index=index, first_clip_id=ep.clip_ids[0], last_clip_id=ep.clip_ids[-1],
                             start=ep.start, end=ep.end, start_s=ep.start_s, end_s=ep.end_s, clips=len(ep.clip_ids),
                             recordings=list(ep.recordings), loudness=list(ep.loudness))
            session.add(row)
            session.flush()
            session.add_all(EpisodeClip(episode_id=row.id, clip_id=c) for c in ep.clip_ids)
        session.add_all(HighlightRow(date=date, rank=rank, clip_id=h.clip_id, score=h.score,
                                     reasons=list(h.reasons), components=h.components)
                        for rank, h in enumerate(highlights, start=1))


def _episode_dict(row: EpisodeRow) -> dict:
    return {"id": row.id, "date": row.date, "index": row.index, "first_clip_id": row.first_clip_id,
            "last_clip_id": row.last_clip_id, "start": row.start.isoformat() if row.start else None,
            "end": row.end.isoformat() if row.end else None, "start_s": row.start_s, "end_s": row.end_s,
            "clips": row.clips, "recordings": list(row.recordings), "loudness": list(row.loudness)}


def day_episodes(engine: Engine, date: str) -> list[dict]:
    """``date``'s episodes in time order, as dicts (``start``/``end`` ISO wall times or ``None``)."""
    with Session(engine) as session:
        rows = session.scalars(select(EpisodeRow).where(EpisodeRow.date == date).order_by(EpisodeRow.index))
        return [_episode_dict(r) for r in rows]


def day_highlights(engine: Engine, date: str) -> list[dict]:
    """``date``'s highlights by rank: ``{"rank", "clip_id", "score", "reasons", "components"}``."""
    with Session(engine) as session:
        rows = session.scalars(select(HighlightRow).where(HighlightRow.date == date).order_by(HighlightRow.rank))
        return [{"rank": r.rank, "clip_id": r.clip_id, "score": r.score, "reasons": list(r.reasons),
                 "components": dict(r.components)} for r in rows]


def episode_of(engine: Engine, clip_ids) -> dict[int, dict]:
    """The episode of each clip that has one: ``{clip_id: episode dict}`` (as :func:`day_episodes`)."""
    ids = sorted({int(c) for c in clip_ids})
    found: dict[int, dict] = {}
    with Session(engine) as session:
        for i in range(0, len(ids), _IN_CHUNK):
            rows = session.execute(select(EpisodeClip.clip_id, EpisodeRow)
                                   .join(EpisodeRow, EpisodeRow.id == EpisodeClip.episode_id)
                                   .where(EpisodeClip.clip_id.in_(ids[i:i + _IN_CHUNK])))
            for clip_id, row in rows:
                found[clip_id] = _episode_dict(row)
    return found


def day_counts(session: Session, day: str) -> dict:
    """What forgetting ``day`` removes from these tables, by table."""
    episode_ids = select(EpisodeRow.id).where(EpisodeRow.date == day)

    def count(model, *where):
        return session.scalar(select(func.count()).select_from(model).where(*where))

    return {"episodes": count(EpisodeRow, EpisodeRow.date == day),
            "episode_clips": count(EpisodeClip, EpisodeClip.episode_id.in_(episode_ids)),
            "highlights": count(HighlightRow, HighlightRow.date == day)}


def delete_day(session: Session, day: str) -> None:
    """Delete ``day``'s episodes, their clip lists and its highlights (inside the caller's transaction)."""
    session.execute(delete(EpisodeClip).where(EpisodeClip.episode_id.in_(
        select(EpisodeRow.id).where(EpisodeRow.date == day))))
    session.execute(delete(EpisodeRow).where(EpisodeRow.date == day))
    session.execute(delete(HighlightRow).where(HighlightRow.date == day))

