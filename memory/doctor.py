"""``sleep.py doctor``: does the database agree with the shards and files on disk?

Checks that every complete shard's file exists with the shape the database records, that
every shard row has its vector and every vector its row, that no shard file, kept file
(``memory/keep``) or map file (``memory/maps``) lies on disk unknown to the database, nor a
cached search index (``memory/index``) of a version the database no longer holds, and that the frames, audio, clips,
keepsakes and raw recordings the database names exist. ``--repair`` makes them agree,
always toward what is really there: rows whose file is gone are dropped (a keepsake loses
just the missing file), files no row knows are deleted, shards with missing rows are
compacted.

A year of memory names tens of millions of files: rows are read in chunks of plain tuples
and compared with one listing per folder (:mod:`memory.listing`), not a ``stat`` per file,
so time grows with the files and memory stays flat (``bench/doctor.py`` measures both).
"""
from __future__ import annotations

import contextlib
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterator
from operator import itemgetter

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from core.atomic import TMP_MARK
from core.lock import NightLock, pid_alive
from core.paths import Paths
from memory import journal_care
from memory.catalog import EmbeddingSpace, Shard, ShardRow
from memory.db import open_database
from memory.keepsakes import KeepsakeRow
from memory.listing import Listings, unknown_files
from memory.maps import SpaceMapRow
from memory.schema import AudioSegment, Clip, Frame, Source
from memory.shards import read_rows, shard_problem
from memory.store import EmbeddingRow, write_embeddings

log = logging.getLogger(__name__)
_TMP_PID = re.compile(re.escape(TMP_MARK) + r"(\d+)-")
# Rows read at a time: memory stays flat however many clips the memory holds, and a repair
# may change rows between chunks.
_CHUNK = 50_000
_IN = 500  # ids in one ``IN (...)`` of a repair


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
        if hi is not None and (lo < 0 or hi >= shard.rows) and report.problem(
                f"{what}: database rows point past its {shard.rows} vectors", "dropped those rows"):
            session.execute(delete(ShardRow).where(
                ShardRow.shard_id == shard.id, (ShardRow.row < 0) | (ShardRow.row >= shard.rows)))
            n = session.scalar(select(func.count()).select_from(ShardRow)
                               .where(ShardRow.shard_id == shard.id))
        if n < shard.rows and report.problem(f"{what}: {shard.rows - n} vectors have no database row "
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


def _check_stray_files(session: Session, paths: Paths, report: _Report, kept: _Kept) -> None:
    shard_paths = set(session.scalars(select(Shard.path))) | journal_care.known_paths(session)
    _unknown_files(paths, paths.embeddings, _named_in(shard_paths), "shard file", report)
    _unknown_files(paths, paths.memory / "keep", kept.unknown_in, "kept file", report, kept.named)
    map_paths = set(session.scalars(select(SpaceMapRow.path)))
    _unknown_files(paths, paths.memory / "maps", _named_in(map_paths), "map file", report)
    _stale_indexes(session, paths, report)


def _named_in(known: set[str]) -> Callable[[str, list[str]], set[str]]:
    return lambda folder, names: {name for name in names if f"{folder}/{name}" not in known}


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


def _unknown_files(paths: Paths, folder, unknown_in: Callable[[str, list[str]], set[str]], what: str,
                   report: _Report, named_elsewhere: Callable[[set[str]], set[str]] | None = None) -> None:
    """Files under ``folder`` that no row names are problems (deleted on repair).

    Args:
        unknown_in: given a folder (relative to the root) and the names of its files, the
            names no row names.
        named_elsewhere: of those, the paths some row names all the same (asked once, of
            them all: ``unknown_in`` may look only at the rows of its folder).
    """
    if not folder.is_dir():
        return

    def picked(parent: str, names: list[str]) -> set[str]:
        # Temporary files first, known or not, as a writer leaves them.
        return unknown_in(parent, names) | {n for n in names if TMP_MARK in n and _TMP_PID.search(n)}

    unknown = []
    for rel in unknown_files(paths.root, str(folder.relative_to(paths.root)), picked):
        match = _TMP_PID.search(rel.rpartition("/")[2])
        if match:
            if pid_alive(int(match.group(1))):
                continue  # a writer is working on it right now
            report.notes.append(f"{rel}: temporary file of an interrupted write")
            if report.repair:
                (paths.root / rel).unlink(missing_ok=True)
            continue
        unknown.append(rel)
    if unknown and named_elsewhere is not None:
        named = named_elsewhere(set(unknown))
        unknown = [rel for rel in unknown if rel not in named]
    for rel in unknown:
        if report.problem(f"{rel}: {what} no database row knows", "deleted it"):
            (paths.root / rel).unlink(missing_ok=True)


def _cursor(session: Session):
    """A DB-API cursor in the session's transaction: plain tuples cost half what SQLAlchemy
    rows do, and a year of memory has tens of millions of rows to read."""
    return session.connection().connection.driver_connection.cursor()


def _in_parts(ids: list[int]) -> Iterator[list[int]]:
    for i in range(0, len(ids), _IN):
        yield ids[i:i + _IN]


class _Kept:
    """``memory/keep`` against the keepsake rows, a day at a time: one listing of each day's
    folder and one read of its rows find both the files no row names (the stray-file check,
    through :meth:`unknown_in`) and the rows whose files are gone (:attr:`missing`, reported
    by :func:`_check_keepsakes`). Every day's paths at once would be two strings per clip of
    the whole memory in RAM. The files the stray-file check then deletes are ones no row
    names, or temporary ones (which no row can name: :func:`memory.keepsakes.write_keep_file`
    refuses such names), so finding the missing ones first changes nothing."""

    def __init__(self, session: Session, paths: Paths):
        self._cursor = _cursor(session)
        self._on_disk = Listings(paths.root)
        self._base = str((paths.memory / "keep").relative_to(paths.root))
        self._checked: set[str] = set()
        self.missing: list[tuple[int, int, str]] = []  # (clip id, 0 keyframe | 1 snippet, path)

    def unknown_in(self, folder: str, names: list[str]) -> set[str]:
        """Of ``names`` in ``folder``, those no row of the folder's day names."""
        parent, _, date = folder.rpartition("/")
        if parent != self._base:
            return set(names)  # not a day's folder: only :meth:`named` can know them
        present = set(map(f"{folder}/".__add__, names))
        unknown = present - self._check_day(date, present)
        return {rel.rpartition("/")[2] for rel in unknown}

    def check_the_rest(self) -> None:
        """The rows of days whose folder the walk did not meet (a missing folder)."""
        date = ""
        while (date := self._cursor.execute("SELECT min(date) FROM keepsakes WHERE date > ?", (date,))
               .fetchone()[0]) is not None:
            if date not in self._checked:
                self._check_day(date, frozenset())

    def _check_day(self, date: str, present: set[str] | frozenset[str]) -> set[str]:
        """Record the rows of ``date`` whose files are not in ``present`` nor on disk; return
        every path the rows name."""
        self._checked.add(date)
        rows = self._cursor.execute("SELECT clip_id, keyframe, snippet FROM keepsakes WHERE date = ?",
                                    (date,)).fetchall()
        wanted = set(map(itemgetter(1), rows))
        wanted.update(map(itemgetter(2), rows))
        wanted.discard(None)
        wanted.discard("")
        gone = self._on_disk.missing(wanted - present)  # files of another folder, or really gone
        if gone:
            self.missing += [(clip_id, column, files[column]) for clip_id, *files in rows
                             for column in (0, 1) if files[column] in gone]
        return wanted

    def named(self, candidates: set[str]) -> set[str]:
        """Those of ``candidates`` that some row names (a row of another day): one pass over every row."""
        found, last = set(), -1
        while rows := self._cursor.execute(
                f"SELECT clip_id, keyframe, snippet FROM keepsakes WHERE clip_id > ? ORDER BY clip_id LIMIT {_CHUNK}",
                (last,)).fetchall():
            found.update(p for _, keyframe, snippet in rows for p in (keyframe, snippet) if p in candidates)
            last = rows[-1][0]
        return found


def _check_keepsakes(session: Session, report: _Report, kept: _Kept) -> None:
    """Every file a keepsake names exists; on repair a missing one is cleared from its row,
    and a row left with nothing is dropped (the clip's footage, if still there, is kept
    again by rerunning that night's ``keep`` stage)."""
    kept.check_the_rest()
    cleared: tuple[list[int], list[int]] = ([], [])
    for clip_id, column, path in sorted(kept.missing):
        if report.problem(f"keepsake {path}: file missing", f"cleared it from clip {clip_id}'s keepsake"):
            cleared[column].append(clip_id)
    if not report.repair:
        return
    for column, ids in zip((KeepsakeRow.keyframe, KeepsakeRow.snippet), cleared):
        for part in _in_parts(ids):
            session.execute(update(KeepsakeRow).where(KeepsakeRow.clip_id.in_(part)).values({column: None}))
    session.execute(delete(KeepsakeRow).where(func.coalesce(KeepsakeRow.keyframe, "") == "",
                                              func.coalesce(KeepsakeRow.snippet, "") == ""))


def _missing_files(session: Session, on_disk: Listings, table: str, key: str, column: str,
                   where: str = "") -> Iterator[list[tuple[int, str]]]:
    """Per chunk of rows of ``table`` (in ``key`` order), ``(key, path)`` of those whose file
    ``column`` names is gone."""
    cursor = _cursor(session)
    sql = (f"SELECT {key}, {column} FROM {table} WHERE {key} > ? AND {column} IS NOT NULL AND {column} != ''"
           f"{where} ORDER BY {key} LIMIT {_CHUNK}")
    last = -(2 ** 63)
    while rows := cursor.execute(sql, (last,)).fetchall():
        last = rows[-1][0]
        missing = on_disk.missing(map(itemgetter(1), rows))
        yield [(row_id, path) for row_id, path in rows if path in missing] if missing else []


def _check_media(session: Session, paths: Paths, report: _Report, timed) -> None:
    on_disk = Listings(paths.root)

    def missing(table, key, column, where="") -> Iterator[list[tuple[int, str]]]:
        return _missing_files(session, on_disk, table, key, column, where)

    with timed("frames"):
        for gone in missing("frames", "id", "path"):
            ids = [i for i, path in gone if report.problem(f"frame {path}: file missing", "dropped its row")]
            for part in _in_parts(ids):
                session.execute(update(ShardRow).where(ShardRow.frame_id.in_(part)).values(frame_id=None))
                session.execute(delete(Frame).where(Frame.id.in_(part)))
    with timed("audio segments"):
        for gone in missing("audio_segments", "id", "path"):
            ids = [i for i, path in gone if report.problem(f"audio {path}: file missing", "dropped its row")]
            for part in _in_parts(ids):
                session.execute(delete(AudioSegment).where(AudioSegment.id.in_(part)))
    with timed("clip files"):
        for gone in missing("clips", "id", "video_path"):
            ids = [i for i, path in gone if report.problem(f"clip {path}: file missing", "cleared its path")]
            for part in _in_parts(ids):
                session.execute(update(Clip).where(Clip.id.in_(part)).values(video_path=None))
    with timed("recordings"):
        for gone in missing("sources", "id", "path", " AND status = 'ok'"):
            ids = [i for i, path in gone if report.problem(f"recording {path}: file missing",
                                                           "marked the source removed")]
            for part in _in_parts(ids):
                session.execute(update(Source).where(Source.id.in_(part)).values(
                    status="removed", reason="file missing (sleep.py doctor --repair)"))


def doctor(paths: Paths, *, repair: bool = False, timings: dict | None = None) -> dict:
    """Check (and with ``repair``, fix) the memory under ``paths.root``.

    Args:
        paths: the root's layout.
        repair: make the database and the files agree.
        timings: if given, filled with the seconds each check took (``{"shards": 1.2,
            "stray files": 30.1, "frames": 0.4, ...}``; the kept files are checked with the
            stray files).
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
    seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def timed(name: str):
        started = time.perf_counter()
        yield
        seconds[name] = time.perf_counter() - started

    with NightLock(paths.lock, "doctor"):
        engine = open_database(paths.database)
        try:
            with Session(engine) as session:
                with timed("shards"):
                    compact = _check_shards(session, paths, report)
                with timed("journal"):
                    compact_journal = journal_care.check(session, paths, report)
                kept = _Kept(session, paths)
                with timed("stray files"):
                    _check_stray_files(session, paths, report, kept)
                _check_media(session, paths, report, timed)
                with timed("keepsakes"):
                    _check_keepsakes(session, report, kept)
                if repair:
                    session.commit()
            if repair:
                with timed("compaction"):
                    _compact(engine, paths, compact)
                    journal_care.compact(engine, paths, compact_journal)
        finally:
            engine.dispose()
    log.debug("doctor: %s", ", ".join(f"{name} {s:.2f} s" for name, s in seconds.items()))
    if timings is not None:
        timings.update(seconds)
    for line in report.problems:
        log.debug("doctor: %s", line)
    return report.as_dict()
