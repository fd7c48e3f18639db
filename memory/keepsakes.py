"""What each clip keeps for good: a keyframe and its sound, so later encoders can embed it again.

Retention removes a day's frames and audio segments, but every night's encoders write a new
model version and earlier days must move into it. So each clip keeps a small JPEG of its
middle frame and its sound as a 16 kHz mono snippet, under ``memory/keep/{date}/`` as
``{clip_id}.jpg`` and ``{clip_id}.flac`` (or ``.wav``), named by one ``keepsakes`` row per
clip. Retention never removes them; forgetting the day does.

Writes are files first (each through the root's vault, :mod:`core.vault`: temporary name,
fsync, rename; sealed when the memory is),
then every row of the day in one transaction, then the removal of the day's files no row
names: a crash leaves at worst files nobody points at (``sleep.py doctor --repair``), never
rows pointing at nothing.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Engine, ForeignKey, String, Text, select
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.atomic import TMP_MARK
from core.paths import Paths
from memory.db import Base
from memory.schema import AudioSegment, Clip, Frame
from memory.shards import private_folder

log = logging.getLogger(__name__)

SNIPPET_RATE = 16000  # Hz, mono: what the audio encoders read
KEYFRAME_SUFFIX = ".jpg"
SNIPPET_SUFFIXES = {"flac": ".flac", "wav": ".wav"}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_IN_CHUNK = 900  # SQLite's bound-parameter limit in older builds


class KeepsakeRow(Base):
    __tablename__ = "keepsakes"

    # A clip deleted (ingest redoing a day) takes its keepsake row along; its files are
    # then removed by the next keep of that day or by `sleep.py doctor --repair`.
    clip_id: Mapped[int] = mapped_column(ForeignKey("clips.id", ondelete="CASCADE"), primary_key=True)
    date: Mapped[str] = mapped_column(String(10), index=True)  # YYYY-MM-DD of the clip's night
    keyframe: Mapped[str | None] = mapped_column(Text, nullable=True)  # relative to the root
    snippet: Mapped[str | None] = mapped_column(Text, nullable=True)  # relative to the root


@dataclass(frozen=True)
class Keepsake:
    """What one clip keeps after its footage is gone.

    Attributes:
        clip_id: the clip.
        date: its night, ``YYYY-MM-DD``.
        keyframe: path relative to the root of an RGB JPEG whose short side is
            ``memory.keep.keyframe_size`` (the frame's own, if that was smaller); ``None``
            for a clip without video.
        snippet: path relative to the root of the clip's sound, 16 kHz mono, readable with
            ``soundfile.read``; ``None`` for a clip without sound.
    """

    clip_id: int
    date: str
    keyframe: str | None
    snippet: str | None


def _as_keepsake(row: KeepsakeRow) -> Keepsake:
    return Keepsake(row.clip_id, row.date, row.keyframe, row.snippet)


def day_keepsakes(session: Session, date: str) -> list[Keepsake]:
    """The keepsakes of the night ``date``'s clips, ordered by clip id."""
    rows = session.scalars(select(KeepsakeRow).where(KeepsakeRow.date == date)
                           .order_by(KeepsakeRow.clip_id))
    return [_as_keepsake(r) for r in rows]


def keyframes(session: Session, clip_ids) -> dict[int, str]:
    """Each clip's kept keyframe, relative to the root (clips without one are absent)."""
    ids = sorted(set(clip_ids))
    out: dict[int, str] = {}
    for i in range(0, len(ids), _IN_CHUNK):
        rows = session.execute(select(KeepsakeRow.clip_id, KeepsakeRow.keyframe)
                               .where(KeepsakeRow.clip_id.in_(ids[i:i + _IN_CHUNK]),
                                      KeepsakeRow.keyframe.is_not(None)))
        out.update((clip_id, path) for clip_id, path in rows)
    return out


def keepsake_days(session: Session) -> list[str]:
    """The dates that have keepsakes, oldest first."""
    return list(session.scalars(select(KeepsakeRow.date).distinct().order_by(KeepsakeRow.date)))


def day_clip_ids(session: Session, date: str) -> list[int]:
    """Ids of the night's clips that have a frame or an audio segment, in order."""
    with_frames = select(Frame.clip_id).join(Clip, Clip.id == Frame.clip_id).where(Clip.date == date)
    with_audio = (select(AudioSegment.clip_id).join(Clip, Clip.id == AudioSegment.clip_id)
                  .where(Clip.date == date))
    return sorted(set(session.scalars(with_frames)) | set(session.scalars(with_audio)))


def keyframe_name(clip_id: int) -> str:
    return f"{clip_id}{KEYFRAME_SUFFIX}"


def snippet_name(clip_id: int, snippet_format: str) -> str:
    """``{clip_id}.flac`` or ``{clip_id}.wav``.

    Raises:
        ValueError: a format other than ``flac`` or ``wav``.
    """
    if snippet_format not in SNIPPET_SUFFIXES:
        raise ValueError(f"snippet format {snippet_format!r}: expected one of {sorted(SNIPPET_SUFFIXES)}")
    return f"{clip_id}{SNIPPET_SUFFIXES[snippet_format]}"


def _check_date(date: str) -> None:
    if not _DATE.match(date or ""):
        raise ValueError(f"date {date!r}: expected YYYY-MM-DD")


def write_keep_file(paths: Paths, date: str, name: str, data: bytes) -> str:
    """Write one kept file atomically (temporary name, fsync, rename), owner-only; sealed in
    a sealed memory (read it back with ``paths.vault.open``).

    Args:
        paths: the root's layout.
        date: the clip's night, ``YYYY-MM-DD``.
        name: the file name (:func:`keyframe_name`, :func:`snippet_name`).
        data: the encoded JPEG or sound file.
    Returns:
        the file's path relative to the root, for its :class:`Keepsake`.
    """
    _check_date(date)
    if "/" in name or name.startswith(".") or TMP_MARK in name:
        raise ValueError(f"kept file name {name!r}: a plain file name expected")
    folder = private_folder(paths, paths.keep(date))
    final = paths.vault.write_bytes(folder / name, data)
    return str(final.relative_to(paths.root))


def save_keepsakes(engine: Engine, paths: Paths, date: str, keepsakes: Iterable[Keepsake]) -> list[str]:
    """Record the day's keepsakes (files already written) and remove the day's files no row names.

    Rows are inserted or replaced by clip id in one transaction, so running twice leaves one
    row per clip. A keepsake with neither keyframe nor snippet is not stored.

    Args:
        engine: the memory database.
        paths: the root's layout.
        date: the night, ``YYYY-MM-DD``; every keepsake must be of this date.
        keepsakes: the rows to store.
    Returns:
        the files removed because no row names them any more (relative to the root): a
        snippet of a format no longer configured, or the files of a clip ingest replaced.
    """
    _check_date(date)
    values = [{"clip_id": k.clip_id, "date": k.date, "keyframe": k.keyframe, "snippet": k.snippet}
              for k in keepsakes if k.keyframe or k.snippet]
    if any(v["date"] != date for v in values):
        raise ValueError(f"save_keepsakes({date}): every keepsake must be of {date}")
    with Session(engine) as session, session.begin():
        if values:
            stmt = insert(KeepsakeRow)
            session.execute(stmt.on_conflict_do_update(
                index_elements=[KeepsakeRow.clip_id],
                set_={"date": stmt.excluded.date, "keyframe": stmt.excluded.keyframe,
                      "snippet": stmt.excluded.snippet}), values)
        known = known_files(session, date)
    removed = []
    folder = paths.keep(date)
    if folder.is_dir():
        for file in sorted(folder.iterdir()):
            rel = str(file.relative_to(paths.root))
            if file.is_file() and TMP_MARK not in file.name and rel not in known:
                file.unlink(missing_ok=True)
                removed.append(rel)
    if removed:
        log.info("keep %s: removed %d file(s) no keepsake names", date, len(removed))
    return removed


def known_files(session: Session, date: str | None = None) -> set[str]:
    """Every kept file a row names (of ``date``, or of every day), relative to the root."""
    query = select(KeepsakeRow.keyframe, KeepsakeRow.snippet)
    if date is not None:
        query = query.where(KeepsakeRow.date == date)
    return {path for row in session.execute(query) for path in row if path}
