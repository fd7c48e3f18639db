"""Retention, the night's last stage: drop old footage, keep every memory.

``memory.retention.raw_days``: recordings (``data/raw/D``) are kept this many days;
``derived_days``: clips, frames and audio segments likewise. A day is removed once it is
that many days older than the night (``0`` removes even tonight's after the night).
Embeddings, clips' rows, their keepsakes (``memory/keep``: the keyframe and sound that let
later encoders embed the day again) and the report are kept forever: a person keeps their
memories after deleting the footage, and searches still return the time and source of a
moment.

``checkpoint_days``: each night's model checkpoints (``checkpoints/{model}/{date}.pt``) are
kept this many days, except the newest of each model and any whose version
(``{model}@{date}``) the memory still searches.
"""
from __future__ import annotations

import datetime as dt
import logging
import shutil
from collections.abc import Iterable

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from core.paths import Paths
from core.sealed import SealedFileError
from core.vault import read_file
from memory.catalog import ShardRow, latest_version, spaces
from memory.checkpoints import CheckpointSum
from memory.schema import AudioSegment, Clip, Frame, Source

log = logging.getLogger(__name__)

# The text file naming a model's newest checkpoint (models.checkpoint.LATEST; models/ is a
# package of this layer, so the name is spelled here too).
_LATEST_POINTER = "latest"


def _expired(dates: set[dt.date], today: dt.date, keep_days: int | None) -> list[dt.date]:
    if keep_days is None:
        return []
    return sorted(d for d in dates if (today - d).days >= keep_days)


def searched_versions(engine) -> set[str]:
    """The model versions the memory searches now: the latest version of every space."""
    return {version for name in spaces(engine) if (version := latest_version(engine, name))}


def _checkpoint_dates(folder) -> list[dt.date]:
    found = []
    for file in folder.glob("*.pt"):
        try:
            found.append(dt.date.fromisoformat(file.stem))
        except ValueError:
            continue
    return sorted(found)


def _pointer_date(folder) -> dt.date | None:
    try:
        return dt.date.fromisoformat(read_file(folder / _LATEST_POINTER).decode("utf-8").strip())
    except (OSError, ValueError, SealedFileError):
        return None


def remove_old_checkpoints(engine, paths: Paths, today: dt.date, keep_days: int | None,
                           in_use: set[str]) -> list[str]:
    """Remove ``checkpoints/{model}/{date}.pt`` older than ``keep_days`` relative to ``today``,
    and their checksum rows (``checkpoint_sums``): the rows first, in one commit, then the
    files, so a crash in between leaves a file no row names (recorded again by the next
    stage's end or ``doctor --repair``), never a row naming a removed file.

    Never removed: each model's newest checkpoint (and the one its ``latest`` pointer names),
    and any whose version ``{model}@{date}`` is in ``in_use``: a query embeds its example
    with the checkpoint of the version it searches.

    Returns:
        the removed files, relative to the root.
    """
    if keep_days is None or not paths.checkpoints.is_dir():
        return []
    expired = []
    for folder in sorted(p for p in paths.checkpoints.iterdir() if p.is_dir()):
        dates = _checkpoint_dates(folder)
        if not dates:
            continue
        protected = {dates[-1], _pointer_date(folder)}
        for date in _expired(set(dates), today, keep_days):
            if date in protected or f"{folder.name}@{date.isoformat()}" in in_use:
                continue
            expired.append(str((folder / f"{date.isoformat()}.pt").relative_to(paths.root)))
    if expired:
        with Session(engine) as session, session.begin():
            session.execute(delete(CheckpointSum).where(CheckpointSum.path.in_(expired)))
    for rel in expired:
        (paths.root / rel).unlink(missing_ok=True)
    return expired


def apply_retention(engine, paths: Paths, retention, today: dt.date, *,
                    keep_versions: Iterable[str] = ()) -> dict:
    """Remove footage and checkpoints older than the limits, relative to ``today``.

    Args:
        engine: the memory database.
        paths: the root's layout.
        retention: ``cfg.memory.retention`` (``raw_days``, ``derived_days``,
            ``checkpoint_days``).
        today: the night's date.
        keep_versions: model versions (``{model}@{date}``) whose checkpoints must stay
            besides the latest version of every space (:func:`searched_versions`), e.g. one
            the memory still searches while earlier days are re-embedded.
    Returns:
        ``{"raw_removed": [dates], "derived_removed": [dates], "checkpoints_removed":
        [paths relative to the root], "metrics": {...}}``.
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
        log.info("retention: recordings of %s and media of %s removed; embeddings and keepsakes kept",
                 [d.isoformat() for d in raw] or "no day", [d.isoformat() for d in derived] or "no day")
    checkpoints: list[str] = []
    if retention.checkpoint_days is not None:
        in_use = searched_versions(engine) | set(keep_versions)
        checkpoints = remove_old_checkpoints(engine, paths, today, retention.checkpoint_days, in_use)
        if checkpoints:
            log.info("retention: %d checkpoint(s) older than %d days removed: %s", len(checkpoints),
                     retention.checkpoint_days, ", ".join(checkpoints))
    return {"raw_removed": [d.isoformat() for d in raw],
            "derived_removed": [d.isoformat() for d in derived],
            "checkpoints_removed": checkpoints,
            "metrics": {"raw_days_removed": len(raw), "derived_days_removed": len(derived),
                        "frames_dropped": frames_dropped, "audio_segments_dropped": audio_dropped,
                        "checkpoints_removed": len(checkpoints)}}
