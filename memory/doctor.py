"""``sleep.py doctor``: does the database agree with the shards and files on disk?

Checks that every complete shard's file exists with the shape the database records and
matches the block checksums recorded when it was written (each shard is read whole once, the
first time a doctor meets it; every one with ``--read-data``; the model checkpoints likewise,
:mod:`memory.checkpoints`), that every shard row has its vector and every vector its row, that no shard file, kept file
(``memory/keep``) or map file (``memory/maps``) lies on disk unknown to the database, nor a
cached search index (``memory/index``) of a version the database no longer holds, and that the frames, audio, clips,
keepsakes and raw recordings the database names exist. ``--repair`` makes them agree,
always toward what is really there: rows whose file is gone are dropped (a keepsake loses
just the missing file), files no row knows are deleted, shards with missing rows are
compacted, and a damaged shard's file is moved to ``memory/quarantine/`` (its row dropped:
rerunning that night's stage writes it again). Searches leave a damaged shard out even
before the doctor runs (:mod:`memory.search`).

A year of memory names tens of millions of files: rows are read in chunks of plain tuples
and compared with one listing per folder (:mod:`memory.listing`), not a ``stat`` per file,
so time grows with the files and memory stays flat; a large memory's scans (:mod:`memory.scan`)
are shared by a pool of one process more than the cores (``bench/doctor.py`` measures both).

A sealed memory (``memory.encryption: on``) is checked the same way through its key: the
database through SQLCipher (the workers are handed the key, :func:`memory.scan.executor`), a
shard's sums against its decrypted plaintext, and a sealed file that does not decrypt is
damaged. A plaintext file where every file should be sealed is a problem too (``memory/``,
``checkpoints/``, ``reports/``; the media folders with ``--read-data``).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from core.lock import NightLock, held, pid_alive
from core.paths import Paths
from memory import checkpoints, integrity, journal_care, scan
from memory.catalog import EmbeddingSpace, Shard, ShardRow
from memory.db import open_database
from memory.keepsakes import KeepsakeRow
from memory.listing import unknown_files
from memory.maps import SpaceMapRow
from memory.schema import AudioSegment, Clip, Frame, Source
from memory.shards import read_rows, shard_problem
from memory.store import EmbeddingRow, write_embeddings

log = logging.getLogger(__name__)
# Rows read at a time: memory stays flat however many clips the memory holds.
_CHUNK = scan.CHUNK
# Below this many files named, the scans run in this process (see :func:`default_workers`).
_PARALLEL_FROM = 1_000_000
_IN = 500  # ids in one ``IN (...)`` of a repair


class _Report:
    def __init__(self, repair: bool):
        self.repair = repair
        self.problems: list[str] = []
        self.repaired: list[str] = []
        self.notes: list[str] = []
        self.file_fixes: list[Callable[[], object]] = []
        self.fixing: set[str] = set()

    def after_commit(self, rel: str, fix: Callable[[], object]) -> None:
        """Move or remove the file ``rel`` (relative to the root) once the repair's rows are
        committed: a row must never name a file already gone (the commit can fail, a disk
        full, or the process die first); a file whose row is gone is at worst left behind,
        which the next doctor names. Until then the stray-file check leaves it alone."""
        self.fixing.add(rel)
        self.file_fixes.append(fix)

    def problem(self, text: str, fix: str | None = None) -> bool:
        """Record a problem; return whether to repair it now."""
        self.problems.append(text)
        if self.repair and fix:
            self.repaired.append(f"{text}: {fix}")
        return self.repair

    def as_dict(self, workers: int = 1) -> dict:
        return {"problems": self.problems, "repaired": self.repaired, "notes": self.notes, "workers": workers,
                "ok": not self.problems or (self.repair and len(self.repaired) == len(self.problems))}


def _check_shards(session: Session, paths: Paths, report: _Report,
                  scans: _Scans) -> tuple[list[int], list[int]]:
    """Shard files against shard rows and, for those read this time, their contents against
    their block checksums; returns the ids of shards that need compacting, and of those read
    whole that matched their checksums."""
    counts = scans.shard_counts()
    damage, verified = scans.shard_damage()
    compact, unsummed = [], []
    for shard in session.scalars(select(Shard).order_by(Shard.id)):
        what = f"shard {shard.path} ({shard.date})"
        if not shard.complete:
            if report.problem(f"{what}: marked incomplete", "removed its row and file"):
                session.execute(delete(Shard).where(Shard.id == shard.id))
                report.after_commit(shard.path, (paths.root / shard.path).unlink)
            continue
        found = shard_problem(paths, shard) or damage.get(shard.id)
        if found is not None:
            file = paths.root / shard.path
            fix = (f"moved the file to {integrity.QUARANTINE}/ and removed its row" if file.exists()
                   else "removed its row") + "; rerun that night's embedding stage"
            if report.problem(f"{what}: file {found}, database says ({shard.rows}, {shard.dim})", fix):
                session.execute(delete(Shard).where(Shard.id == shard.id))
                report.after_commit(shard.path, functools.partial(integrity.quarantine, paths, shard.path))
            continue
        if shard.block_sums is None:
            unsummed.append(shard)
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
    if unsummed:
        report.notes.append(f"{len(unsummed)} shard(s) were written before checksums were kept"
                            + (": recorded theirs now" if report.repair else ": `doctor --repair` records theirs"))
        if report.repair:
            now = dt.datetime.now()
            for shard in unsummed:  # summed from the file as it is: read now, so verified now
                shard.block_sums = integrity.file_sums(paths.root / shard.path)
                shard.verified_at = now
    return compact, verified




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


def _check_stray_files(session: Session, paths: Paths, report: _Report, scans: _Scans) -> None:
    shard_paths = set(session.scalars(select(Shard.path))) | journal_care.known_paths(session)
    _report_unknown(paths, _walk_unknown(paths, paths.embeddings, _named_in(shard_paths)), "shard file", report,
                    functools.partial(_shards_named_now, session.get_bind(), paths))
    _report_unknown(paths, scans.unknown_kept_files(), "kept file", report, scans.kept_elsewhere)
    map_paths = set(session.scalars(select(SpaceMapRow.path)))
    _report_unknown(paths, _walk_unknown(paths, paths.memory / "maps", _named_in(map_paths)), "map file", report)
    _stale_indexes(session, paths, report)


def _shards_named_now(engine, paths: Paths, found: set[str]) -> set[str]:
    """Of the shard files ``found`` unnamed in the doctor's snapshot, those a row names now.

    ``journal add`` writes shards beside a doctor (it takes no night lock): a file it wrote
    after the doctor's snapshot began, its row committed since or about to be, is new, not
    stray. Asked on a fresh connection while holding the lock ``journal add`` holds from
    writing the file to committing its row.
    """
    with held(paths.shard_lock), engine.connect() as connection:
        named = set()
        for table in ("shards", "journal_shards"):
            for part in _in_parts(sorted(found)):
                named.update(connection.exec_driver_sql(
                    f"SELECT path FROM {table} WHERE path IN ({','.join('?' * len(part))})",
                    tuple(part)).scalars())
    return named


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


def _walk_unknown(paths: Paths, folder, unknown_in: Callable[[str, list[str]], set[str]]) -> list[str]:
    """Files under ``folder`` that ``unknown_in`` (given a folder relative to the root and the
    names of its files, the names no row names) picks, and temporary files of writes."""
    if not folder.is_dir():
        return []

    def picked(parent: str, names: list[str]) -> set[str]:
        # Temporary files first, known or not, as a writer leaves them.
        return unknown_in(parent, names) | {n for n in names if scan.temporary_pid(n) is not None}

    return list(unknown_files(paths.root, str(folder.relative_to(paths.root)), picked))


def _report_unknown(paths: Paths, found: list[str], what: str, report: _Report,
                    named_elsewhere: Callable[[set[str]], set[str]] | None = None) -> None:
    """Files no row names are problems (deleted on repair); temporary files of a write whose
    process is gone are notes (deleted on repair), of a live one left alone.

    Args:
        found: the candidates, relative to the root.
        named_elsewhere: of those, the paths some row names all the same (asked once, of
            them all: the scan that found them may have looked only at the rows of their folder).
    """
    unknown = []
    for rel in found:
        if rel in report.fixing:
            continue  # its row was just dropped; the file goes after the commit
        pid = scan.temporary_pid(rel.rpartition("/")[2])
        if pid is not None:
            if pid_alive(pid):
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


def _driver(session: Session):
    """The DB-API connection under the session's transaction: plain tuples cost half what
    SQLAlchemy rows do, and a year of memory has tens of millions of rows to read."""
    return session.connection().connection.driver_connection


def _in_parts(ids: list[int]) -> Iterator[list[int]]:
    for i in range(0, len(ids), _IN):
        yield ids[i:i + _IN]


# Bytes of shards read against their checksums in one task (a year holds 47 GB of shards).
_READ_BYTES = 256 << 20


def _by_size(rows: list[tuple[int, int]], size: int) -> Iterator[list[int]]:
    """The ids of ``(id, values)`` rows in batches of about ``size`` bytes of float16."""
    batch, held = [], 0
    for shard_id, values in rows:
        batch.append(shard_id)
        held += 2 * values
        if held >= size:
            yield batch
            batch, held = [], 0
    if batch:
        yield batch


# (check, table, key, column, extra condition): the files rows name, checked for existence.
_MEDIA = (("frames", "frames", "id", "path", ""),
          ("audio segments", "audio_segments", "id", "path", ""),
          ("clip files", "clips", "id", "video_path", ""),
          ("recordings", "sources", "id", "path", " AND status = 'ok'"))


class _Scans:
    """Every read-only scan of the memory (:mod:`memory.scan`), submitted at once to ``pool``
    so its workers share them while this process checks the rest; results are read back in
    a fixed order, so the report is the same whatever the number of workers."""

    def __init__(self, pool: Executor, session: Session, paths: Paths, workers: int, read_data: bool):
        root, database = str(paths.root), str(paths.database)
        connection = _driver(session)
        parts = 4 * workers  # several tasks a worker: an even finish
        self._session = session
        # Shards whose whole file is read against its checksums: each once (new ones since the
        # last doctor), or all of them with ``read_data``; in tasks of about _READ_BYTES.
        to_read = connection.execute(
            "SELECT id, rows * dim FROM shards WHERE complete AND block_sums IS NOT NULL"
            + ("" if read_data else " AND verified_at IS NULL") + " ORDER BY id").fetchall()
        self._damage = [pool.submit(scan.damaged_shards, root, database, ids)
                        for ids in _by_size(to_read, _READ_BYTES)]
        self._shard_counts = [pool.submit(scan.shard_row_counts, database, *span)
                              for span in scan.id_ranges(connection, "shards", "id", parts)]
        self._media = {check: [pool.submit(scan.missing_files, root, database, table, key, column, where, *span)
                               for span in scan.id_ranges(connection, table, key, parts)]
                       for check, table, key, column, where in _MEDIA}
        # memory/keep/{date}/: each folder, and each day with rows but no folder (all missing).
        keep = paths.memory / "keep"
        self._keep_base = str(keep.relative_to(paths.root))
        self._keep_top: list[tuple[str, bool]] = []
        if keep.is_dir():
            with os.scandir(keep) as entries:
                self._keep_top = sorted((e.name, e.is_dir() and not e.is_symlink()) for e in entries)
        dates = {name for name, is_dir in self._keep_top if is_dir}
        dates.update(_keepsake_dates(connection))
        ordered = sorted(dates)
        # Days a task: about TASK_ROWS files each (a 16-hour day keeps 38,400), and at least
        # ``parts`` tasks, so the last ones do not leave a worker idle. Rows counted by their
        # ids, as scan.id_ranges does.
        low, high = connection.execute("SELECT min(clip_id), max(clip_id) FROM keepsakes").fetchone()
        files = 2 * (high - low + 1) if low is not None else 0
        per = max(1, min(-(-len(ordered) // parts), len(ordered) * scan.TASK_ROWS // max(1, files)))
        self._kept = [(batch, pool.submit(scan.kept_days, root, database, self._keep_base, batch))
                      for batch in scan.batched(ordered, per)]
        self._kept_results: dict[str, tuple[list[str], list[tuple]]] | None = None
        # A sealed memory: plaintext files where every file should be sealed. The few folders
        # of shards, maps, indexes, checkpoints and reports each time; the day folders of media
        # (a year's 49M files, one read each) with ``read_data``.
        self._unsealed: list[tuple[list[str], Future]] = []
        if paths.vault.sealing:
            self._unsealed.append((_SEALED_ALWAYS, pool.submit(scan.unsealed_files, root, _SEALED_ALWAYS,
                                                               (_SEALED_MEDIA[-1],))))
            if read_data:
                days = [f"{base}/{entry.name}" for base in _SEALED_MEDIA if (paths.root / base).is_dir()
                        for entry in sorted(os.scandir(paths.root / base), key=lambda e: e.name)
                        if entry.is_dir() and not entry.is_symlink()]
                self._unsealed += [(batch, pool.submit(scan.unsealed_files, root, batch))
                                   for batch in scan.batched(days, _SEALED_DAYS)]

    def unsealed(self) -> dict[str, tuple[int, str | None]]:
        """``{area: (files not sealed, the first)}``, areas as :func:`_area` names them, in a
        fixed order; empty for a plain memory."""
        found: dict[str, tuple[int, str | None]] = {}
        for folders, future in self._unsealed:
            for folder, (count, first) in zip(folders, future.result()):
                if count:
                    area = _area(folder)
                    had, earlier = found.get(area, (0, None))
                    found[area] = (had + count, earlier or first)
        return found

    def shard_damage(self) -> tuple[dict[int, str], list[int]]:
        """Of the shards read whole: ``{shard id: what is wrong}`` of those that failed their
        checksums, and the ids of those that passed."""
        damage: dict[int, str] = {}
        verified: list[int] = []
        for future in self._damage:
            for shard_id, found in future.result():
                if found is None:
                    verified.append(shard_id)
                else:
                    damage[shard_id] = found
        return damage, verified

    def shard_counts(self) -> dict[int, tuple[int, int, int]]:
        counts: dict[int, tuple[int, int, int]] = {}
        for future in self._shard_counts:
            counts.update(future.result())
        return counts

    def missing_media(self, check: str) -> Iterator[list[tuple[int, str]]]:
        """``(id, path)`` of the rows of ``check`` whose file is gone, a task's at a time, in id order."""
        for future in self._media[check]:
            yield future.result()

    def _kept_days(self) -> dict[str, tuple[list[str], list[tuple]]]:
        if self._kept_results is None:
            self._kept_results = {}
            for batch, future in self._kept:
                self._kept_results.update(zip(batch, future.result()))
        return self._kept_results

    def unknown_kept_files(self) -> list[str]:
        """Files under ``memory/keep`` no keepsake of their day names, and temporary files, in
        ``sorted(rglob)`` order (a file right in ``memory/keep`` belongs to no day)."""
        days = self._kept_days()
        found: list[str] = []
        for name, is_dir in self._keep_top:
            if is_dir:
                found += days[name][0]
            else:
                found.append(f"{self._keep_base}/{name}")
        return found

    def missing_kept_files(self) -> list[tuple[int, int, str]]:
        """``(clip id, 0 keyframe | 1 snippet, path)`` of keepsakes whose file is gone, by clip."""
        return sorted(m for _, missing in self._kept_days().values() for m in missing)

    def kept_elsewhere(self, candidates: set[str]) -> set[str]:
        """Those of ``candidates`` that some keepsake names (a row of another day): one pass over every row."""
        cursor = _driver(self._session).cursor()
        found, last = set(), -1
        while rows := cursor.execute(
                f"SELECT clip_id, keyframe, snippet FROM keepsakes WHERE clip_id > ? ORDER BY clip_id LIMIT {_CHUNK}",
                (last,)).fetchall():
            found.update(p for _, keyframe, snippet in rows for p in (keyframe, snippet) if p in candidates)
            last = rows[-1][0]
        return found


# Where a sealed memory is looked at for plaintext files: these whole folders every time,
# and the day folders of the media ones (``memory/keep`` last) with ``--read-data``.
_SEALED_ALWAYS = ["memory", "checkpoints", "reports"]
_SEALED_MEDIA = ("data/clips", "data/frames", "data/audio", "memory/keep")
_SEALED_DAYS = 8  # day folders a task


def _area(folder: str) -> str:
    """The part of the root a folder belongs to: ``data/frames/2026-01-10`` is ``data/frames``."""
    return next((base for base in _SEALED_MEDIA if folder.startswith(f"{base}/")), folder)


def _check_sealing(report: _Report, scans: _Scans) -> None:
    """Plaintext files in a sealed memory are problems (there is nothing to repair: written
    before ``memory.encryption`` was on, they hold what it is meant to hide; written since, by
    a writer that skips the vault, which is a bug to report)."""
    for area, (count, first) in scans.unsealed().items():
        report.problem(f"{area}/: {count} file(s) not sealed in a sealed memory (first: {first})")


def _keepsake_dates(connection) -> list[str]:
    """The days keepsakes have, one index seek each (``DISTINCT`` would read all 7M a year)."""
    dates, date = [], ""
    while (date := connection.execute("SELECT min(date) FROM keepsakes WHERE date > ?", (date,)).fetchone()[0]):
        dates.append(date)
    return dates


def _check_keepsakes(session: Session, report: _Report, scans: _Scans) -> None:
    """Every file a keepsake names exists; on repair a missing one is cleared from its row,
    and a row left with nothing is dropped (the clip's footage, if still there, is kept
    again by rerunning that night's ``keep`` stage)."""
    cleared: tuple[list[int], list[int]] = ([], [])
    for clip_id, column, path in scans.missing_kept_files():
        if report.problem(f"keepsake {path}: file missing", f"cleared it from clip {clip_id}'s keepsake"):
            cleared[column].append(clip_id)
    if not report.repair:
        return
    for column, ids in zip((KeepsakeRow.keyframe, KeepsakeRow.snippet), cleared):
        for part in _in_parts(ids):
            session.execute(update(KeepsakeRow).where(KeepsakeRow.clip_id.in_(part)).values({column: None}))
    session.execute(delete(KeepsakeRow).where(func.coalesce(KeepsakeRow.keyframe, "") == "",
                                              func.coalesce(KeepsakeRow.snippet, "") == ""))


def _check_media(session: Session, report: _Report, scans: _Scans, timed) -> None:
    with timed("frames"):
        for gone in scans.missing_media("frames"):
            ids = [i for i, path in gone if report.problem(f"frame {path}: file missing", "dropped its row")]
            for part in _in_parts(ids):
                session.execute(update(ShardRow).where(ShardRow.frame_id.in_(part)).values(frame_id=None))
                session.execute(delete(Frame).where(Frame.id.in_(part)))
    with timed("audio segments"):
        for gone in scans.missing_media("audio segments"):
            ids = [i for i, path in gone if report.problem(f"audio {path}: file missing", "dropped its row")]
            for part in _in_parts(ids):
                session.execute(delete(AudioSegment).where(AudioSegment.id.in_(part)))
    with timed("clip files"):
        for gone in scans.missing_media("clip files"):
            ids = [i for i, path in gone if report.problem(f"clip {path}: file missing", "cleared its path")]
            for part in _in_parts(ids):
                session.execute(update(Clip).where(Clip.id.in_(part)).values(video_path=None))
    with timed("recordings"):
        for gone in scans.missing_media("recordings"):
            ids = [i for i, path in gone if report.problem(f"recording {path}: file missing",
                                                           "marked the source removed")]
            for part in _in_parts(ids):
                session.execute(update(Source).where(Source.id.in_(part)).values(
                    status="removed", reason="file missing (sleep.py doctor --repair)"))


def default_workers(files: int) -> int:
    """Processes for a memory that names about ``files`` files: one for a small memory (a
    pool's start is most of its check), else one more than the cores, up to 8: a scan waits
    on the disk a tenth of its time, and the extra worker fills it (a year on 2 cores, warm:
    45 s with 2 workers, 35-40 s with 3; bench/doctor.py)."""
    if files < _PARALLEL_FROM:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(2, min(8, cores + 1))


def _named_files(session: Session) -> int:
    """About how many files the memory's rows name (ids are dense enough to count by)."""
    connection = _driver(session)
    return sum(connection.execute(f"SELECT coalesce(max(id), 0) - coalesce(min(id), 0) FROM {table}").fetchone()[0]
               for table in ("frames", "audio_segments", "clips"))


def _stamp_verified(engine, shard_ids: list[int], checkpoint_paths: list[str]) -> None:
    """Record that these shards' and checkpoints' files matched their checksums now: the next
    doctor reads only newer ones (a bookkeeping write, made without ``--repair`` too)."""
    now = dt.datetime.now()
    with Session(engine) as session, session.begin():
        for part in _in_parts(shard_ids):
            session.execute(update(Shard).where(Shard.id.in_(part)).values(verified_at=now))
        checkpoints.stamp_verified(session, checkpoint_paths)


def doctor(paths: Paths, *, repair: bool = False, timings: dict | None = None,
           workers: int | None = None, read_data: bool = False) -> dict:
    """Check (and with ``repair``, fix) the memory under ``paths.root``.

    Args:
        paths: the root's layout.
        repair: make the database and the files agree.
        timings: if given, filled with the seconds each check took (``{"shards": 1.2,
            "stray files": 30.1, "frames": 0.4, ...}``; the kept files are checked with the
            stray files). With workers the scans run side by side, so a check's figure is
            how long this process waited for it.
        read_data: read every shard against its checksums, not only those no doctor has
            read before (each night's new ones); in a sealed memory, also look for plaintext
            files among the media (``data/clips|frames|audio``, ``memory/keep``).
        workers: processes that share the scans of the files and rows; default: one for a
            memory of under :data:`_PARALLEL_FROM` files, else one more than the cores (at most 8). The
            report is the same whatever the number.
    Returns:
        ``{"problems": [...], "repaired": [...], "notes": [...], "workers": int, "ok": bool}``;
        notes are harmless (temporary files of interrupted writes) and are not problems.
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
                if workers is None:
                    workers = default_workers(_named_files(session))
                with scan.executor(workers, paths.vault) as pool:
                    scans = _Scans(pool, session, paths, workers, read_data)
                    with timed("shards"):
                        compact, verified = _check_shards(session, paths, report, scans)
                    with timed("journal"):
                        compact_journal = journal_care.check(session, paths, report)
                    with timed("checkpoints"):
                        checkpoints_read = checkpoints.check(session, paths, report, read_data=read_data)
                    with timed("stray files"):
                        _check_stray_files(session, paths, report, scans)
                    with timed("sealing"):
                        _check_sealing(report, scans)
                    _check_media(session, report, scans, timed)
                    with timed("keepsakes"):
                        _check_keepsakes(session, report, scans)
                if repair:
                    session.commit()
                    for fix in report.file_fixes:
                        with contextlib.suppress(FileNotFoundError):
                            fix()
            _stamp_verified(engine, verified, checkpoints_read)
            if repair:
                with timed("compaction"):
                    _compact(engine, paths, compact)
                    journal_care.compact(engine, paths, compact_journal)
        finally:
            engine.dispose()
    log.debug("doctor (%d workers): %s", workers, ", ".join(f"{name} {s:.2f} s" for name, s in seconds.items()))
    if timings is not None:
        timings.update(seconds)
    for line in report.problems:
        log.debug("doctor: %s", line)
    return report.as_dict(workers)
