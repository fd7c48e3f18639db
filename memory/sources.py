"""Reading and writing a day's sources with their clips, frames and audio segments.

Ingest calls these; each write is one transaction so a source is either fully in the
database or not at all.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from memory.schema import AudioSegment, Clip, Frame, Source


@dataclass
class ClipRecord:
    """A clip to store: its window, wall-clock start, frames and audio segment."""

    index: int
    start_s: float
    end_s: float
    wall_start: dt.datetime | None = None
    video_path: str | None = None
    frames: list[tuple[float, str]] = field(default_factory=list)  # (t_s, path)
    audio: tuple[str, float, int] | None = None  # (path, seconds, sample_rate)


def day_sources(session: Session, date: str) -> list[Source]:
    """Every source row of a night (any status), by path."""
    return list(session.scalars(select(Source).where(Source.date == date).order_by(Source.path)))


def save_source(session: Session, source: Source, clips: list[ClipRecord],
                replaces: list[Source] = ()) -> Source:
    """Store ``source`` with its clips in one transaction, deleting ``replaces`` first.

    Args:
        session: an open session (committed here).
        source: a new :class:`Source` (not yet added).
        clips: its clips with frames and audio.
        replaces: older rows this source supersedes (same path, or its own old version);
            their clips, frames and audio rows go with them.
    Returns:
        the stored source.
    """
    try:
        for old in replaces:
            session.delete(old)
        session.flush()
        for record in clips:
            clip = Clip(date=source.date, index=record.index, start_s=record.start_s,
                        end_s=record.end_s, wall_start=record.wall_start,
                        video_path=record.video_path)
            clip.frames = [Frame(t_s=t, path=path) for t, path in record.frames]
            if record.audio is not None:
                path, seconds, rate = record.audio
                clip.audio = AudioSegment(path=path, seconds=seconds, sample_rate=rate)
            source.clips.append(clip)
        session.add(source)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return source


def update_sources(session: Session, changes: list[tuple[Source, dict]],
                   deletes: list[Source] = ()) -> None:
    """Set fields on some sources and delete others, in one transaction."""
    try:
        for source, fields in changes:
            for key, value in fields.items():
                setattr(source, key, value)
        for source in deletes:
            session.delete(source)
        session.commit()
    except BaseException:
        session.rollback()
        raise


def day_totals(session: Session, date: str) -> dict:
    """Clips, frames, audio segments and seconds of footage of a night's ingested sources."""
    ok = select(Source.id).where(Source.date == date, Source.status == "ok")
    clips = select(Clip.id).where(Clip.source_id.in_(ok))
    return {
        "clips": session.scalar(select(func.count()).select_from(Clip).where(Clip.source_id.in_(ok))) or 0,
        "frames": session.scalar(select(func.count()).select_from(Frame).where(Frame.clip_id.in_(clips))) or 0,
        "audio_segments": session.scalar(select(func.count()).select_from(AudioSegment)
                                         .where(AudioSegment.clip_id.in_(clips))) or 0,
        "footage_seconds": round(session.scalar(select(func.sum(Source.duration_s))
                                                .where(Source.id.in_(ok))) or 0.0, 3),
    }


def source_counts(session: Session, date: str) -> dict[int, dict]:
    """``{source_id: {"clips", "frames", "audio_segments"}}`` for a night, in three queries."""
    counts: dict[int, dict] = {}
    ids = select(Source.id).where(Source.date == date)
    for sid, n in session.execute(select(Clip.source_id, func.count()).where(Clip.source_id.in_(ids))
                                  .group_by(Clip.source_id)):
        counts.setdefault(sid, {"clips": 0, "frames": 0, "audio_segments": 0})["clips"] = n
    for sid, n in session.execute(select(Clip.source_id, func.count()).join(Frame, Frame.clip_id == Clip.id)
                                  .where(Clip.source_id.in_(ids)).group_by(Clip.source_id)):
        counts[sid]["frames"] = n
    for sid, n in session.execute(select(Clip.source_id, func.count())
                                  .join(AudioSegment, AudioSegment.clip_id == Clip.id)
                                  .where(Clip.source_id.in_(ids)).group_by(Clip.source_id)):
        counts[sid]["audio_segments"] = n
    return counts


def media_folders(session: Session, source_ids: list[int]) -> set[str]:
    """The folders (relative to the root) that hold the frames, audio segments and clip
    copies the rows of ``source_ids`` name: where ingest put each source's outputs."""
    if not source_ids:
        return set()
    clip_ids = select(Clip.id).where(Clip.source_id.in_(source_ids))
    # One file per clip is enough to name its folder; the frames of a clip all share one.
    named = [select(func.min(Frame.path)).where(Frame.clip_id.in_(clip_ids)).group_by(Frame.clip_id),
             select(AudioSegment.path).where(AudioSegment.clip_id.in_(clip_ids)),
             select(Clip.video_path).where(Clip.source_id.in_(source_ids), Clip.video_path.is_not(None))]
    folders = set()
    for query in named:
        folders.update(path.rpartition("/")[0] for path in session.scalars(query) if path)
    return folders
