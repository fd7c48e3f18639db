"""Retention, the night's last stage: drop old footage, keep every memory.

``memory.retention.raw_days``: recordings (``data/raw/D``) are kept this many days;
``derived_days``: clips, frames and audio segments likewise. A day is removed once it is
that many days older than the night (``0`` removes even tonight's after the night).
Embeddings, clips' rows and the report are kept forever: a person keeps their memories
after deleting the footage, and searches still return the time and source of a moment.
"""
from __future__ import annotations

import datetime as dt
import logging
import shutil

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from core.paths import Paths
from memory.catalog import ShardRow
from memory.schema import AudioSegment, Clip, Frame, Source

log = logging.getLogger(__name__)


def _expired(dates: set[dt.date], today: dt.date, keep_days: int | None) -> list[dt.date]:
    if keep_days is None:
        return []
    return sorted(d for d in dates if (today - d).days >= keep_days)


def apply_retention(engine, paths: Paths, retention, today: dt.date) -> dict:
    """Remove footage older than the limits, relative to ``today``.

    Args:
        engine: the memory database.
        paths: the root's layout.
        retention: ``cfg.memory.retention`` (``raw_days``, ``derived_days``).
        today: the night's date.
    Returns:
        ``{"raw_removed": [dates], "derived_removed": [dates], "metrics": {...}}``.
    """
    with Session(engine) as session:
        db_dates = {dt.date.fromisoformat(d) for d in session.scalars(select(Source.date).distinct())}
    raw = _expired(set(paths.dates_under("raw")) | db_dates, today, retention.raw_days)
    derived_dates = (set(paths.dates_under("clips")) | set(paths.dates_under("frames"))
                     | set(paths.dates_under("audio")) | db_dates)
    derived = _expired(derived_dates, today, retention.derived_days)
    frames_dropped = audio_dropped = 0
    with Session(engine) as session, session.begin():
        for date in raw:
            session.execute(update(Source).where(Source.date == date.isoformat(),
                                                 Source.status == "ok").values(
                status="removed", reason=f"retention: recordings kept {retention.raw_days} days"))
        for date in derived:
            clip_ids = select(Clip.id).where(Clip.date == date.isoformat())
            frame_ids = select(Frame.id).where(Frame.clip_id.in_(clip_ids))
            session.execute(update(ShardRow).where(ShardRow.frame_id.in_(frame_ids))
                            .values(frame_id=None))
            frames_dropped += session.execute(delete(Frame).where(Frame.clip_id.in_(clip_ids))).rowcount
            audio_dropped += session.execute(
                delete(AudioSegment).where(AudioSegment.clip_id.in_(clip_ids))).rowcount
            session.execute(update(Clip).where(Clip.date == date.isoformat()).values(video_path=None))
    # Rows first, files second: a crash in between leaves files nobody points at, never
    # rows pointing at nothing.
    for date in raw:
        shutil.rmtree(paths.raw(date), ignore_errors=True)
    for date in derived:
        for folder in (paths.clips(date), paths.frames(date), paths.audio(date)):
            shutil.rmtree(folder, ignore_errors=True)
    if raw or derived:
        log.info("retention: recordings of %s and media of %s removed; embeddings kept",
                 [d.isoformat() for d in raw] or "no day", [d.isoformat() for d in derived] or "no day")
    return {"raw_removed": [d.isoformat() for d in raw],
            "derived_removed": [d.isoformat() for d in derived],
            "metrics": {"raw_days_removed": len(raw), "derived_days_removed": len(derived),
                        "frames_dropped": frames_dropped, "audio_segments_dropped": audio_dropped}}
