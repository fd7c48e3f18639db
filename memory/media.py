"""What the model stages read of a day: its frames and audio segments, and earlier days';
and what the search page shows of a clip (:func:`clip_media`, :func:`clip_days`).

The stages glue ``models/`` (which never touches the database) to the memory; these are the
queries they need, so that SQL stays in this package.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from memory.keepsakes import KeepsakeRow
from memory.schema import AudioSegment, Clip, Frame, Source

# SQLite allows at most 999 bound parameters in older builds.
_IN_CHUNK = 900


@dataclass(frozen=True)
class FrameRef:
    """One frame: its id, its clip, and the JPEG path relative to the root."""

    frame_id: int
    clip_id: int
    path: str


@dataclass(frozen=True)
class SegmentRef:
    """One clip's audio: its clip id, the WAV path relative to the root, and its date."""

    clip_id: int
    path: str
    date: str


def day_frames(session: Session, date: str) -> list[FrameRef]:
    """Every frame of the night's clips, in id order."""
    rows = session.execute(select(Frame.id, Frame.clip_id, Frame.path).join(Clip, Frame.clip_id == Clip.id)
                           .where(Clip.date == date).order_by(Frame.id))
    return [FrameRef(*row) for row in rows]


def earlier_frame_ids(session: Session, date: str) -> list[int]:
    """Ids of every frame of the days before ``date`` (the replay pool), in id order."""
    return list(session.scalars(select(Frame.id).join(Clip, Frame.clip_id == Clip.id)
                                .where(Clip.date < date).order_by(Frame.id)))


def earlier_frame_ids_by_day(session: Session, date: str) -> dict[str, list[int]]:
    """Ids of every frame of the days before ``date`` (the replay pool), by day (oldest first),
    in id order within a day; days without frames (retention removed them) are absent."""
    by_day: dict[str, list[int]] = {}
    for day, frame_id in session.execute(select(Clip.date, Frame.id).join(Clip, Frame.clip_id == Clip.id)
                                         .where(Clip.date < date).order_by(Clip.date, Frame.id)):
        by_day.setdefault(day, []).append(frame_id)
    return by_day


def frame_paths(session: Session, frame_ids: list[int]) -> list[str]:
    """The JPEG paths of ``frame_ids`` (relative to the root)."""
    paths: list[str] = []
    for start in range(0, len(frame_ids), _IN_CHUNK):
        paths += session.scalars(select(Frame.path).where(Frame.id.in_(frame_ids[start:start + _IN_CHUNK])))
    return paths


def _segments(session: Session, where) -> list[SegmentRef]:
    rows = session.execute(select(AudioSegment.clip_id, AudioSegment.path, Clip.date)
                           .join(Clip, Clip.id == AudioSegment.clip_id).where(where).order_by(Clip.id))
    return [SegmentRef(*row) for row in rows]


def day_segments(session: Session, date: str) -> list[SegmentRef]:
    """The audio segments of the night's clips, in clip order."""
    return _segments(session, Clip.date == date)


def earlier_segments(session: Session, date: str) -> list[SegmentRef]:
    """Every audio segment of the days before ``date`` (the replay pool)."""
    return _segments(session, Clip.date < date)


def earlier_segments_by_day(session: Session, date: str) -> dict[str, list[SegmentRef]]:
    """:func:`earlier_segments` by day (oldest first); days without segments are absent."""
    by_day: dict[str, list[SegmentRef]] = {}
    for ref in sorted(earlier_segments(session, date), key=lambda r: r.date):  # stable: clip order kept
        by_day.setdefault(ref.date, []).append(ref)
    return by_day


def middle_frames(session: Session, clip_ids) -> dict[int, str]:
    """For each clip, the path of its frame nearest the clip's middle (clips without frames are absent)."""
    best: dict[int, tuple[float, str]] = {}
    ids = sorted(set(clip_ids))
    for i in range(0, len(ids), _IN_CHUNK):
        for clip_id, t_s, path, start_s, end_s in session.execute(
                select(Frame.clip_id, Frame.t_s, Frame.path, Clip.start_s, Clip.end_s)
                .join(Clip, Clip.id == Frame.clip_id).where(Frame.clip_id.in_(ids[i:i + _IN_CHUNK]))):
            gap = abs(t_s - (start_s + end_s) / 2)
            if clip_id not in best or gap < best[clip_id][0]:
                best[clip_id] = (gap, path)
    return {c: p for c, (_, p) in best.items()}


@dataclass(frozen=True)
class ClipMedia:
    """What can show or play one clip; every path is relative to the root, ``None`` when the
    memory records none (whether the file is still on disk is the caller's to check)."""

    clip_id: int
    date: str
    start_s: float  # offset of the clip in its recording
    end_s: float
    source_path: str  # the raw recording
    has_video: bool  # the recording had a picture (else it is sound only)
    video_path: str | None  # the clip's own file (``ingest.write_clips``)
    segment_path: str | None  # its WAV segment (``data/audio/{date}/segments/``)
    keyframe: str | None  # kept for good under ``memory/keep/{date}/``
    snippet: str | None  # its sound, kept likewise


def clip_media(session: Session, *, clip_ids=None, date: str | None = None,
               limit: int | None = None, offset: int = 0) -> list[ClipMedia]:
    """The media of ``clip_ids`` (any order), or of the night ``date``'s clips in time order.

    Args:
        session: an open session of the memory.
        clip_ids: the clips wanted; ids not in the memory are absent from the result.
        date: instead, every clip of that night (``YYYY-MM-DD``), paged by ``limit``/``offset``.
    """
    query = (select(Clip.id, Clip.date, Clip.start_s, Clip.end_s, Source.path, Source.has_video, Clip.video_path,
                    AudioSegment.path, KeepsakeRow.keyframe, KeepsakeRow.snippet)
             .join(Source, Source.id == Clip.source_id)
             .outerjoin(AudioSegment, AudioSegment.clip_id == Clip.id)
             .outerjoin(KeepsakeRow, KeepsakeRow.clip_id == Clip.id))
    if date is not None:
        rows = session.execute(query.where(Clip.date == date).order_by(Source.wall_start, Source.path, Clip.start_s)
                               .limit(limit).offset(offset))
        return [ClipMedia(*row) for row in rows]
    ids = sorted(set(clip_ids or ()))
    found: list[ClipMedia] = []
    for i in range(0, len(ids), _IN_CHUNK):
        found += [ClipMedia(*row) for row in session.execute(query.where(Clip.id.in_(ids[i:i + _IN_CHUNK])))]
    return found


def clip_days(session: Session) -> list[tuple[str, int]]:
    """Every night with clips, oldest first, with how many it holds."""
    return [(day, n) for day, n in session.execute(select(Clip.date, func.count()).group_by(Clip.date)
                                                      .order_by(Clip.date))]


def frame_moments(session: Session, frame_ids) -> dict[int, dict]:
    """When and where each frame is, for showing it beside what was made of it: ``clip_id``,
    ``path`` (the JPEG, relative to the root), ``recording`` (the raw file), ``offset_s`` (into
    the recording) and ``wall`` (ISO wall-clock time, ``None`` when the recording did not say).
    Frames not in the memory are absent."""
    ids = sorted({int(i) for i in frame_ids})
    found: dict[int, dict] = {}
    for i in range(0, len(ids), _IN_CHUNK):
        for frame_id, clip_id, path, t_s, start_s, wall, recording in session.execute(
                select(Frame.id, Frame.clip_id, Frame.path, Frame.t_s, Clip.start_s, Clip.wall_start, Source.path)
                .join(Clip, Clip.id == Frame.clip_id).join(Source, Source.id == Clip.source_id)
                .where(Frame.id.in_(ids[i:i + _IN_CHUNK]))):
            at = wall + dt.timedelta(seconds=t_s - start_s) if wall else None
            found[frame_id] = {"clip_id": clip_id, "path": path, "recording": recording, "offset_s": round(t_s, 2),
                               "wall": at.isoformat(timespec="seconds") if at else None}
    return found
