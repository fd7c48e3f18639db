"""Seal a memory that was stored unencrypted: ``sleep.py key seal`` (issue #18).

A memory made before ``memory.encryption: on`` holds a plaintext SQLite database and
plaintext files. :func:`seal_memory` rewrites each of them sealed with the memory's master
key, in place, and is safe to stop at any point and run again:

1. every file under the root that ``sleep`` wrote (media, shards, keepsakes, maps, index
   caches, checkpoints, reports, dreams, the quarantine) and that is not sealed yet is
   rewritten sealed: a sealed copy beside it, fsynced, renamed over it (:meth:`Vault.writer`).
   Readers tell a sealed file by its magic, so a memory half through this step reads as
   before; a file already sealed is skipped.
2. the database is exported into a SQLCipher file (``sqlcipher_export``) beside it, checked
   by opening it with the key, fsynced and renamed over the plaintext one. Until that
   rename the plaintext database is the memory's: a stop before it leaves it whole.

The database goes last, so "the database is still plaintext" is what says a sealing did not
finish (:func:`memory.db.open_database` names this command then).

Left as they are, by design: the user's own recordings and journals under ``data/raw`` (sleep
never writes them, and retention removes them after ``raw_days``), ``memory/key.json``, the
``checkpoints/{model}/latest`` pointers (a date), lock files and temporaries. The plaintext
blocks the rewritten files leave on the disk are freed, not wiped: a filesystem cannot promise
to overwrite them (copy-on-write, SSD wear levelling). Where that matters, seal a new root on
an encrypted disk instead.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from core.atomic import TMP_MARK, _fsync_dir, tmp_name
from core.errors import UsageError
from core.lock import pid_alive
from core.paths import Paths
from core.sealed import MAGIC
from core.vault import Vault
from memory.db import SQLITE_MAGIC
from memory.scan import temporary_pid

log = logging.getLogger(__name__)

# Folders (relative to the root) whose files sleep writes: everything but data/raw.
SEALED_FOLDERS = ("data/clips", "data/frames", "data/audio", "memory", "checkpoints", "reports")
# Under those, files left plain by design (relative to the root, as scan._PLAIN_BY_DESIGN).
_PLAIN = ("memory/key.json",)
_DATABASE_FILES = ("episodic.sqlite", "episodic.sqlite-wal", "episodic.sqlite-shm", "episodic.sqlite-journal")
COPY_CHUNK = 1 << 20


class SealingError(UsageError):
    """The memory could not be sealed now (another process has the database open)."""


@dataclass
class Sealed:
    """What :func:`seal_memory` did."""

    files: int = 0  # rewritten sealed now
    already: int = 0  # found sealed (an earlier, stopped run; or written sealed)
    bytes: int = 0
    database: str = "already sealed"  # or "sealed now"


def database_is_plain(paths: Paths) -> bool:
    """Whether ``memory/episodic.sqlite`` is a plaintext SQLite file.

    Read before this process opens any connection to it: closing this descriptor would drop
    the POSIX locks SQLite holds on the file through another one.
    """
    try:
        with open(paths.database, "rb") as fh:
            return fh.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except FileNotFoundError:
        return False


def _plain_files(paths: Paths) -> Iterator[Path]:
    for folder in SEALED_FOLDERS:
        base = paths.root / folder
        if not base.is_dir():
            continue
        for parent, dirs, names in os.walk(base):
            dirs.sort()
            rel_parent = Path(parent).relative_to(paths.root)
            for name in sorted(names):
                rel = (rel_parent / name).as_posix()
                if (TMP_MARK in name or rel in _PLAIN or name == "latest" and rel.startswith("checkpoints/")
                        or rel_parent.as_posix() == "memory" and name in _DATABASE_FILES):
                    continue
                path = Path(parent) / name
                if path.is_symlink() or not path.is_file():
                    continue
                yield path


def sweep_dead_temporaries(paths: Paths) -> list[str]:
    """Remove what a killed ``key seal`` (or any killed writer) left being written: temporary
    files and folders under the sealed folders whose writing process is gone. Returns them,
    relative to the root."""
    removed = []
    for folder in SEALED_FOLDERS:
        base = paths.root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob(f"*{TMP_MARK}*"), key=lambda p: len(p.parts)):
            pid = temporary_pid(path.name)
            if pid is None or pid_alive(pid) or any(str(p) in removed for p in path.parents):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(str(path.relative_to(paths.root)))
    return removed


def _original_name(paths: Paths, path: Path) -> Path:
    """Where a file was written: a quarantined one is read as the file it was (its name is
    its associated data), :func:`memory.integrity.quarantine` having kept its path."""
    rel = path.relative_to(paths.root).as_posix()
    prefix = "memory/quarantine/"
    return paths.root / rel[len(prefix):] if rel.startswith(prefix) else path


def seal_files(paths: Paths, vault: Vault) -> tuple[int, int, int]:
    """Rewrite every plaintext file sleep wrote under the root sealed; returns (rewritten,
    already sealed, bytes rewritten)."""
    rewritten = already = size = 0
    files = list(_plain_files(paths))
    bar = tqdm(files, desc="key seal: files", unit="file", disable=not sys.stderr.isatty())
    for path in bar:
        with open(path, "rb") as src:
            head = src.read(len(MAGIC))
            if head == MAGIC:
                already += 1
                continue
            if not head:
                continue  # empty: nothing in it to read
            src.seek(0)
            stat = os.fstat(src.fileno())
            with vault.writer(path, stat.st_mode & 0o777 or 0o600, name_as=_original_name(paths, path)) as dst:
                while chunk := src.read(COPY_CHUNK):
                    dst.write(chunk)
        rewritten += 1
        size += stat.st_size
    return rewritten, already, size


def seal_database(paths: Paths, master_key: bytes) -> bool:
    """Export the plaintext database into a SQLCipher one and put it in its place; False
    when it is sealed already.

    Raises:
        SealingError: another process has the database open (its WAL outlives our close).
    """
    import sqlcipher3

    from memory.cipher_db import cipher_connect, database_key

    if not database_is_plain(paths):
        return False
    database = paths.database
    staged = tmp_name(database)
    plain = sqlcipher3.connect(os.fspath(database), timeout=30)  # no key: plain SQLite
    try:
        plain.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        key_hex = database_key(master_key).hex()  # hex digits only: safe inside the statement
        plain.execute(f"ATTACH DATABASE ? AS sealed KEY \"x'{key_hex}'\"", (os.fspath(staged),))
        plain.execute("SELECT sqlcipher_export('sealed')")
        version = plain.execute("PRAGMA main.user_version").fetchone()[0]
        plain.execute(f"PRAGMA sealed.user_version = {int(version)}")
        plain.execute("DETACH DATABASE sealed")
    except BaseException:
        plain.close()
        staged.unlink(missing_ok=True)
        raise
    plain.close()
    try:
        if Path(f"{database}-wal").exists() or Path(f"{database}-shm").exists():
            # SQLite removes both when its last connection closes: another process holds one.
            raise SealingError(f"{database} is open in another process (`sleep.py serve`, a query, the "
                               "daemon): stop it and run `sleep.py key seal` again")
        check = cipher_connect(staged, master_key)
        try:
            tables = check.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            check.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            check.close()
        if not tables:
            raise SealingError(f"{staged}: the exported database holds no tables; {database} is left as it was")
        for suffix in ("-wal", "-shm"):
            Path(f"{staged}{suffix}").unlink(missing_ok=True)
        fd = os.open(staged, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(staged, 0o600)
        os.replace(staged, database)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    _fsync_dir(database.parent)
    return True


def seal_memory(paths: Paths, vault: Vault) -> Sealed:
    """Seal the memory under ``paths.root`` with ``vault``'s key: files first, the database
    last (see the module's docstring); safe to stop and run again.

    The caller holds the root's night lock and has made or unlocked the key.
    """
    if not vault.sealing:
        raise ValueError("seal_memory needs a vault with the memory's key")
    done = Sealed()
    for rel in sweep_dead_temporaries(paths):
        log.info("key seal: removed %s, left by an interrupted write", rel)
    done.files, done.already, done.bytes = seal_files(paths, vault)
    if seal_database(paths, vault.master_key):
        done.database = "sealed now"
    log.info("key seal: %d files sealed (%.1f MB), %d already sealed; database %s", done.files,
             done.bytes / 1e6, done.already, done.database)
    return done
