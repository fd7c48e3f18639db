"""The doctor's read-only scans of a year of memory, split so that worker processes share them.

Each scan is a plain function of the root, the database's path and one slice of the memory
(a range of row ids, or some days), returning only what it found wrong, so
:func:`memory.doctor.doctor` can hand the slices to a process pool and still report and
repair in one order, alone. A year of memory names about 49 million files; a scan costs a
couple of microseconds a file in Python (a listing entry, a row read, a set operation), so
on one core the whole check takes well over a minute and on N cores a N-th of it
(``bench/doctor.py`` measures both).

The scans only read: each opens its own connection (``PRAGMA query_only``) while the
doctor holds the night's lock, so nothing writes under them. In a sealed memory
(``memory.encryption: on``) that connection is SQLCipher's and the shards are read through
the vault: a worker is handed the memory's key when it starts (:func:`executor`), through
the pool's own pipe, never on a command line, in the environment or in a file.
"""
from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

from core.atomic import TMP_MARK
from core.sealed import is_sealed
from core.vault import Vault, register, vault_of
from memory import integrity
from memory.listing import Listings, unknown_files

# Rows read at a time: memory stays flat however many clips the memory holds.
CHUNK = 50_000
# Paths come back joined in one string by SQLite (``group_concat``), split here: a third of
# the cost of a tuple a row. The unit separator is no character a file name holds in
# practice; a chunk where the count disagrees is read row by row instead.
_SEPARATOR = "\x1f"
_SEPARATOR_SQL = "char(31)"
# Rows (or files) of one task: small enough that every worker gets several (an even finish),
# big enough that starting a task costs nothing beside it.
TASK_ROWS = 400_000
_TMP_PID = re.compile(re.escape(TMP_MARK) + r"(\d+)-")


def connect(database: str | os.PathLike) -> sqlite3.Connection:
    """A read-only connection of the scan's own (a process cannot share its parent's):
    through SQLCipher, with the key this process holds, when the memory is sealed."""
    keyring = vault_of(database)
    if keyring.sealing:
        from memory.cipher_db import cipher_connect  # sqlcipher3 is loaded only for a sealed memory

        connection = cipher_connect(database, keyring.master_key, timeout=30)
    else:
        connection = sqlite3.connect(database, timeout=30)
    connection.execute("PRAGMA query_only = 1")
    return connection


def id_ranges(connection: sqlite3.Connection, table: str, key: str, parts: int) -> list[tuple[int, int]]:
    """``(after, upto]`` ranges of ``key`` that split ``table``'s rows into about ``parts`` parts
    of at most :data:`TASK_ROWS`. The rows are counted by their ids (dense enough: rows are
    inserted a night at a time): ``count(*)`` reads every row, seconds for a year's frames
    while the workers wait for their first task."""
    low, high = connection.execute(f"SELECT min({key}), max({key}) FROM {table}").fetchone()
    if low is None:
        return []
    parts = max(parts, -(-(high - low + 1) // TASK_ROWS))
    span = -(-(high - low + 1) // parts)
    return [(start - 1, min(start - 1 + span, high)) for start in range(low, high + 1, span)]


def shard_row_counts(database: str, after: int, upto: int) -> dict[int, tuple[int, int, int]]:
    """``{shard id: (rows, lowest row, highest row)}`` of the shards with ``after < id <= upto``
    that have rows.

    A count and two index seeks a shard: a year's 49M shard rows counted in one ``GROUP BY``
    took 3x as long (it reads the rows' values for ``min``/``max`` too).
    """
    found = {}
    with contextlib.closing(connect(database)) as connection:
        for (shard_id,) in connection.execute("SELECT id FROM shards WHERE id > ? AND id <= ?", (after, upto)).fetchall():
            n = connection.execute("SELECT count(*) FROM shard_rows WHERE shard_id = ?", (shard_id,)).fetchone()[0]
            if n:
                low = connection.execute("SELECT row FROM shard_rows WHERE shard_id = ? ORDER BY row LIMIT 1",
                                         (shard_id,)).fetchone()[0]
                high = connection.execute("SELECT row FROM shard_rows WHERE shard_id = ? ORDER BY row DESC LIMIT 1",
                                          (shard_id,)).fetchone()[0]
                found[shard_id] = (n, low, high)
    return found


def damaged_shards(root: str, database: str, shard_ids: list[int]) -> list[tuple[int, str | None]]:
    """``(shard id, what is wrong or None)`` of each of ``shard_ids``, its whole file read
    against its block checksums (:func:`memory.integrity.damage`; a sealed one decrypted, and
    damaged where it does not decrypt); a missing file is the header check's to report, so it
    reads ``None`` here."""
    found = []
    with contextlib.closing(connect(database)) as connection:
        for shard_id in shard_ids:
            row = connection.execute("SELECT path, block_sums FROM shards WHERE id = ?", (shard_id,)).fetchone()
            if row is None or row[1] is None:
                continue
            try:
                damage = integrity.damage(Path(root) / row[0], row[1])
                found.append((shard_id, damage and f"damaged: {damage}"))
            except FileNotFoundError:
                found.append((shard_id, None))
    return found


def missing_files(root: str, database: str, table: str, key: str, column: str, where: str,
                  after: int, upto: int) -> list[tuple[int, str]]:
    """``(key, path)`` of the rows of ``table`` with ``after < key <= upto`` whose file (named in
    ``column``, relative to ``root``) does not exist, in ``key`` order."""
    on_disk = Listings(Path(root))
    rows = (f"SELECT {key}, {column} FROM {table} WHERE {key} > ? AND {key} <= ? AND {column} IS NOT NULL "
            f"AND {column} != ''{where} ORDER BY {key} LIMIT {CHUNK}")
    found: list[tuple[int, str]] = []
    with contextlib.closing(connect(database)) as connection:
        while True:
            last, count, joined = connection.execute(
                f"SELECT max({key}), count(*), group_concat({column}, {_SEPARATOR_SQL}) FROM ({rows})",
                (after, upto)).fetchone()
            if not count:
                return found
            paths = joined.split(_SEPARATOR)
            if len(paths) != count:  # a path holding the separator: read them one by one
                paths = [path for _, path in connection.execute(rows, (after, upto))]
            missing = on_disk.missing(paths)
            if missing:
                found += [(row_id, path) for row_id, path in connection.execute(rows, (after, upto))
                          if path in missing]
            after = last


def kept_days(root: str, database: str, base: str, dates: list[str]) -> list[tuple[list[str], list[tuple]]]:
    """``memory/keep`` against the keepsake rows, a day at a time: for each of ``dates``,
    ``(unknown, missing)``.

    One listing of the day's folder (``{base}/{date}``) and one read of its rows find both:

    - ``unknown``: files under the folder that no row of the day names, and temporary files
      of writes (named or not), relative to the root, in ``sorted(rglob)`` order; the doctor
      asks of these whether a row of another day names them;
    - ``missing``: ``(clip id, 0 keyframe | 1 snippet, path)`` of the day's rows whose file
      is gone.

    Every day's paths at once would be two strings per clip of the whole memory in RAM.
    """
    on_disk = Listings(Path(root))
    results = []
    with contextlib.closing(connect(database)) as connection:
        for date in dates:
            folder = f"{base}/{date}"
            count, joined = connection.execute(
                f"SELECT count(*), group_concat(coalesce(keyframe, '') || {_SEPARATOR_SQL} || coalesce(snippet, ''), "
                f"{_SEPARATOR_SQL}) FROM keepsakes WHERE date = ?", (date,)).fetchone()
            named = joined.split(_SEPARATOR) if joined else []
            if len(named) != 2 * count:  # a path holding the separator: read them one by one
                named = [p for row in connection.execute(
                    "SELECT keyframe, snippet FROM keepsakes WHERE date = ?", (date,)) for p in row]
            wanted = set(named)
            wanted.discard(None)
            wanted.discard("")
            present: set[str] = set()

            def unknown_in(parent: str, names: list[str], folder=folder, wanted=wanted, present=present) -> set[str]:
                if parent != folder:
                    return set(names)  # a folder inside the day's: no row names its files
                listed = set(map(f"{folder}/".__add__, names))
                present.update(listed)
                listed.difference_update(wanted)
                return {rel.rpartition("/")[2] for rel in listed} | {
                    name for name in names if TMP_MARK in name and temporary_pid(name) is not None}

            unknown = list(unknown_files(Path(root), folder, unknown_in))
            gone = on_disk.missing(wanted - present)  # files of another folder, or really gone
            missing = [(clip_id, column, files[column]) for clip_id, *files in connection.execute(
                "SELECT clip_id, keyframe, snippet FROM keepsakes WHERE date = ?", (date,))
                for column in (0, 1) if files[column] in gone] if gone else []
            results.append((unknown, missing))
    return results


# Files of a sealed memory that are plain by design, relative to the root: the wrapped key,
# the database (SQLCipher encrypts its own pages) and a model's ``latest`` pointer (a date,
# kept plain by models.checkpoint). The quarantine is never looked at: a sealed file moved
# there no longer opens, and what is there is the doctor's own doing.
_PLAIN_BY_DESIGN = re.compile(r"^(memory/key\.json|memory/episodic\.sqlite(-wal|-shm|-journal)?"
                              r"|checkpoints/[^/]+/latest)$")


def unsealed_files(root: str, folders: list[str], skip: tuple[str, ...] = ()) -> list[tuple[int, str | None]]:
    """In a sealed memory, the files under each of ``folders`` (relative to the root) that are
    not sealed: for each, how many, and the first met (folders and files in name order),
    relative to the root.

    A file is sealed when it starts with :data:`core.sealed.MAGIC` (a 9-byte read: its
    chunks are the doctor's shard and checkpoint checks' business). Not counted: empty
    files (nothing in them to read), temporary files of a write, and files plain by design.

    Args:
        skip: folders (relative to the root) not to look in.
    """
    results = []
    left_out = {integrity.QUARANTINE, *skip}
    for folder in folders:
        count, first = 0, None
        for parent, dirs, names in os.walk(Path(root) / folder):
            rel_parent = os.path.relpath(parent, root).replace(os.sep, "/")
            dirs[:] = sorted(d for d in dirs if f"{rel_parent}/{d}" not in left_out)
            for name in sorted(names):
                rel = f"{rel_parent}/{name}"
                if TMP_MARK in name or _PLAIN_BY_DESIGN.match(rel):
                    continue
                path = os.path.join(parent, name)
                try:
                    if os.path.islink(path) or not os.path.isfile(path) or not os.path.getsize(path):
                        continue
                    if is_sealed(Path(path)):
                        continue
                except FileNotFoundError:
                    continue
                count += 1
                first = first or rel
        results.append((count, first))
    return results


def temporary_pid(name: str) -> int | None:
    """The pid of the writer whose temporary file ``name`` is, or ``None``."""
    match = _TMP_PID.search(name)
    return int(match.group(1)) if match else None


class _Inline(Executor):
    """Runs each task at once, in this process: the pool of one worker, without the process."""

    def submit(self, fn: Callable, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # handed to whoever asks for the result, as a pool would
            future.set_exception(exc)
        return future


def executor(workers: int, vault: Vault | None = None) -> Executor:
    """Where the scans run: ``workers`` processes, or this process for one.

    Forked when this process has a single thread (the command line): a fork starts at once,
    where a spawned worker spends most of a second importing. A process with threads (the
    web page's server) spawns them, since a fork copies locks other threads may hold. The
    workers never touch the connections a fork copies: each opens its own, and a worker
    leaves through ``os._exit``, so no copied object is finalized.

    Args:
        vault: the root's vault; when it seals, each worker is handed its key as it starts
            (:func:`core.vault.register`, the pool's initializer: the key travels through
            the pool's pipe, as a task's arguments do; a fork would have it anyway).
    """
    if workers <= 1:
        return _Inline()
    method = "fork" if threading.active_count() == 1 and "fork" in get_all_start_methods() else "spawn"
    if vault is not None and vault.sealing:
        return ProcessPoolExecutor(max_workers=workers, mp_context=get_context(method),
                                   initializer=register, initargs=(vault.root, vault.master_key))
    return ProcessPoolExecutor(max_workers=workers, mp_context=get_context(method))


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
