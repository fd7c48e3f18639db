"""``sleep.py doctor``: does the database agree with the shards and files on disk?

Checks that every complete shard's file exists with the shape the database records, that
every shard row has its vector and every vector its row, that no shard file, kept file
(``memory/keep``) or map file (``memory/maps``) lies on disk unknown to the database, nor a
cached search index (``memory/index``) of a version the database no longer holds, and that the frames, audio, clips,
keepsakes and raw recordings the database names exist. ``--repair`` makes them agree,
always toward what is really there: rows whose file is gone are dropped (a keepsake loses
just the missing file), files no row knows are deleted, shards with missing rows are
compacted.
"""
from __future__ import annotations

import logging
import os
import re
import shutil

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from core.atomic import TMP_MARK
from core.lock import NightLock
from core.paths import Paths
from memory import journal_care
from memory.catalog import EmbeddingSpace, Shard, ShardRow
from memory.db import open_database
from memory.keepsakes import KeepsakeRow, known_files
from memory.maps import SpaceMapRow
from memory.schema import AudioSegment, Clip, Frame, Source
from memory.shards import read_rows, shard_problem
from memory.store import EmbeddingRow, write_embeddings

log = logging.getLogger(__name__)
_TMP_PID = re.compile(re.escape(TMP_MARK) + r"(\d+)-")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Report:
    def __init__(self, repair: bool):
        self.repair = repair
        self.problems: list[str] = []
        self.repaired: list[str] = []
        self.notes: list[str] = []

    def problem(self, text: str, fix: str | None = None) -> bool:
        """Record a problem; return whether to repair it now."""
        self.problems.append(text)
        if self.repair and fix:
            self.repaired.append(f"{text}: {fix}")
        return self.repair

    def as_dict(self) -> dict:
        return {"problems": self.problems, "repaired": self.repaired, "notes": self.notes,
                "ok": not self.problems or (self.repair and len(self.repaired) == len(self.problems))}


def _check_shards(session: Session, paths: Paths, report: _Report) -> list[int]:
    """Shard files against shard rows; returns the ids of shards that need compacting."""
    counts = {sid: (n, lo, hi) for sid, n, lo, hi in session.execute(
        select(ShardRow.shard_id, func.count(), func.min(ShardRow.row), func.max(ShardRow.row))
        .group_by(ShardRow.shard_id))}
    compact = []
    for shard in session.scalars(select(Shard).order_by(Shard.id)):
        what = f"shard {shard.path} ({shard.date})"
        if not shard.complete:
            if report.problem(f"{what}: marked incomplete", "removed its row and file"):
                session.execute(delete(Shard).where(Shard.id == shard.id))
                (paths.root / shard.path).unlink(missing_ok=True)
            continue
        found = shard_problem(paths, shard)
        if found is not None:
            if report.problem(f"{what}: file {found}, database says ({shard.rows}, {shard.dim})",
                              "removed it; rerun that night's embedding stage"):
                session.execute(delete(Shard).where(Shard.id == shard.id))
                (paths.root / shard.path).unlink(missing_ok=True)
            continue
        n, lo, hi = counts.get(shard.id, (0, None, None))
        if hi is not None and (lo < 0 or hi >= shard.rows):
            if report.problem(f"{what}: database rows point past its {shard.rows} vectors",
                              "dropped those rows"):
                session.execute(delete(ShardRow).where(
                    ShardRow.shard_id == shard.id, (ShardRow.row < 0) | (ShardRow.row >= shard.rows)))
                n = session.scalar(select(func.count()).select_from(ShardRow)
                                   .where(ShardRow.shard_id == shard.id))
        if n < shard.rows:
            if report.problem(f"{what}: {shard.rows - n} vectors have no database row "
                              f"(their clips were deleted)", "rewrote the shard without them"):
                compact.append(shard.id)
    return compact


def _compact(engine, paths: Paths, shard_ids: list[int]) -> None:
    for shard_id in shard_ids:
        with Session(engine) as session:
            shard = session.get(Shard, shard_id)
            space = session.get(EmbeddingSpace, shard.space_id)
            kept = session.execute(select(ShardRow).where(ShardRow.shard_id == shard_id)
                                   .order_by(ShardRow.row)).scalars().all()
        if not kept:
            with Session(engine) as session, session.begin():
                session.execute(delete(Shard).where(Shard.id == shard_id))
            (paths.root / shard.path).unlink(missing_ok=True)
            continue
        write_embeddings(engine, paths, space=space.name, model_version=space.model_version,
                         date=shard.date,
                         rows=[EmbeddingRow(r.clip_id, r.modality, r.frame_id) for r in kept],
                         vectors=read_rows(paths, shard, [r.row for r in kept]))


def _check_stray_files(session: Session, paths: Paths, report: _Report) -> None:
    _unknown_files(paths, paths.embeddings, set(session.scalars(select(Shard.path))) | journal_care.known_paths(session),
                   "shard file", report)
    _unknown_files(paths, paths.memory / "keep", known_files(session), "kept file", report)
    _unknown_files(paths, paths.memory / "maps", set(session.scalars(select(SpaceMapRow.path))), "map file",
                   report)
    _stale_indexes(session, paths, report)


def _stale_indexes(session: Session, paths: Paths, report: _Report) -> None:
    """Cached indexes under ``memory/index/{space}/{version}`` of a version the database lacks
    (a dropped or forgotten one, the process stopped before its files went) are deleted on repair."""
    folder = paths.memory / "index"
    if not folder.is_dir():
        return
    known = {tuple(r) for r in session.execute(select(EmbeddingSpace.name, EmbeddingSpace.model_version))}
    for version_dir in sorted(p for p in folder.glob("*/*") if p.is_dir()):
        if (version_dir.parent.name, version_dir.name) in known:
            continue
        rel = version_dir.relative_to(paths.root)
        if report.problem(f"{rel}: cached index of a version the database no longer holds", "deleted it"):
            shutil.rmtree(version_dir, ignore_errors=True)


def _unknown_files(paths: Paths, folder, known: set[str], what: str, report: _Report) -> None:
    """Files under ``folder`` that no row names are problems (deleted on repair)."""
    if not folder.is_dir():
        return
    for file in sorted(folder.rglob("*")):
        if not file.is_file():
            continue
        rel = str(file.relative_to(paths.root))
        match = _TMP_PID.search(file.name)
        if match:
            if _pid_alive(int(match.group(1))):
                continue  # a writer is working on it right now
            report.notes.append(f"{rel}: temporary file of an interrupted write")
            if report.repair:
                file.unlink(missing_ok=True)
            continue
        if rel not in known and report.problem(f"{rel}: {what} no database row knows", "deleted it"):
            file.unlink(missing_ok=True)


def _check_keepsakes(session: Session, paths: Paths, report: _Report) -> None:
    """Every file a keepsake names exists; on repair a missing one is cleared from its row,
    and a row left with nothing is dropped (the clip's footage, if still there, is kept
    again by rerunning that night's ``keep`` stage)."""
    for row in session.scalars(select(KeepsakeRow).order_by(KeepsakeRow.clip_id)).all():
        for column in ("keyframe", "snippet"):
            path = getattr(row, column)
            if path and not (paths.root / path).exists() and report.problem(
                    f"keepsake {path}: file missing", f"cleared it from clip {row.clip_id}'s keepsake"):
                setattr(row, column, None)
        if report.repair and not row.keyframe and not row.snippet:
            session.delete(row)


def _check_media(session: Session, paths: Paths, report: _Report) -> None:
    def missing(rel: str | None) -> bool:
        return bool(rel) and not (paths.root / rel).exists()

    for frame_id, path in session.execute(select(Frame.id, Frame.path)):
        if missing(path) and report.problem(f"frame {path}: file missing", "dropped its row"):
            session.execute(update(ShardRow).where(ShardRow.frame_id == frame_id).values(frame_id=None))
            session.execute(delete(Frame).where(Frame.id == frame_id))
    for seg_id, path in session.execute(select(AudioSegment.id, AudioSegment.path)):
        if missing(path) and report.problem(f"audio {path}: file missing", "dropped its row"):
            session.execute(delete(AudioSegment).where(AudioSegment.id == seg_id))
    for clip_id, path in session.execute(select(Clip.id, Clip.video_path)):
        if missing(path) and report.problem(f"clip {path}: file missing", "cleared its path"):
            session.execute(update(Clip).where(Clip.id == clip_id).values(video_path=None))
    for source_id, path in session.execute(select(Source.id, Source.path)
                                           .where(Source.status == "ok")):
        if missing(path) and report.problem(f"recording {path}: file missing",
                                            "marked the source removed"):
            session.execute(update(Source).where(Source.id == source_id).values(
                status="removed", reason="file missing (sleep.py doctor --repair)"))


def doctor(paths: Paths, *, repair: bool = False) -> dict:
    """Check (and with ``repair``, fix) the memory under ``paths.root``.

    Args:
        paths: the root's layout.
        repair: make the database and the files agree.
    Returns:
        ``{"problems": [...], "repaired": [...], "notes": [...], "ok": bool}``; notes are
        harmless (temporary files of interrupted writes) and are not problems.
    Raises:
        LockHeld: a night is running (its half-written files would look like problems).
    """
    report = _Report(repair)
    if not paths.database.exists():
        report.notes.append(f"no memory yet at {paths.database}")
        return report.as_dict()
    with NightLock(paths.lock, "doctor"):
        engine = open_database(paths.database)
        try:
            with Session(engine) as session:
                compact = _check_shards(session, paths, report)
                compact_journal = journal_care.check(session, paths, report)
                _check_stray_files(session, paths, report)
                _check_media(session, paths, report)
                _check_keepsakes(session, paths, report)
                if repair:
                    session.commit()
            if repair:
                _compact(engine, paths, compact)
                journal_care.compact(engine, paths, compact_journal)
        finally:
            engine.dispose()
    for line in report.problems:
        log.debug("doctor: %s", line)
    return report.as_dict()
