"""The SQLite database (``memory/episodic.sqlite``): engine set-up and the ORM base.

WAL mode lets queries read while a night writes; a busy timeout makes writers wait for
each other instead of failing. Opening a database also brings an older one up to date
(:func:`_rename_clip_spaces`).
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import DeclarativeBase, sessionmaker

from core.errors import SleepError
from core.filesystems import refuse_network_filesystem
from core.keys import MasterKeyError
from core.paths import make_private_dir
from core.vault import vault

log = logging.getLogger(__name__)

# The OpenCLIP stage was called ``clip`` until the layout refactor (#13).
_RENAMED_SPACES = {"clip": "openclip", "clip_frame": "openclip_frame"}
_OLD_VERSION_PREFIX, _NEW_VERSION_PREFIX = "clip@", "openclip@"


class Base(DeclarativeBase):
    pass


def _on_connect(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    # FULL, not WAL's usual NORMAL: under NORMAL a commit can roll back after a power cut,
    # and every "commit the rows, then remove their files" (forget, retention, supersede,
    # doctor --repair) would then have rows back pointing at removed files. A night commits
    # a few hundred times; the WAL fsync each costs is noise beside its training.
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()


def _renamed(name: str, model_version: str) -> tuple[str, str]:
    if model_version.startswith(_OLD_VERSION_PREFIX):
        model_version = _NEW_VERSION_PREFIX + model_version[len(_OLD_VERSION_PREFIX):]
    return _RENAMED_SPACES[name], model_version


def _rename_clip_spaces(engine: Engine, path: Path) -> None:
    """Rename the spaces ``clip``/``clip_frame`` (versions ``clip@...``) to ``openclip``/
    ``openclip_frame`` (``openclip@...``); idempotent, one transaction.

    Why: the stage and its spaces were renamed, and text search and the stage now ask for
    the new names; left alone, a memory written before the rename would look empty to
    them, and the next night would start a second space beside the old one. Only rows
    change: shard files are found by the path (relative to the root) each ``shards`` row
    holds, which keeps naming the old folder, so no file moves.
    """
    find = text("SELECT id, name, model_version FROM embedding_spaces WHERE name IN (:a, :b)")
    names = dict(zip("ab", _RENAMED_SPACES))
    # A read first: every process opens the database, and only a memory from before the
    # rename should cost a write lock (which would wait behind a night's writes).
    with engine.connect() as conn:
        pending = conn.execute(find, names).all()
    if pending:
        with engine.begin() as conn:
            kept = renamed = 0
            for space_id, name, version in conn.execute(find, names).all():
                new_name, new_version = _renamed(name, version)
                taken = conn.execute(text("SELECT 1 FROM embedding_spaces WHERE name = :n AND "
                                          "model_version = :v AND id != :id"),
                                     {"n": new_name, "v": new_version, "id": space_id}).first()
                if taken:
                    # Only if an old and a new program both wrote this version: leave it
                    # rather than merge shards; searches read the new one.
                    kept += 1
                    continue
                # ``name = :old``: another process opening the same database at the same
                # moment may have renamed it already.
                renamed += conn.execute(text(
                    "UPDATE embedding_spaces SET name = :n, model_version = :v "
                    "WHERE id = :id AND name = :old"),
                    {"n": new_name, "v": new_version, "id": space_id, "old": name}).rowcount
        if renamed:
            log.info("renamed %d embedding space version(s) from clip to openclip", renamed)
        if kept:
            log.warning("%d clip/clip_frame space version(s) kept their old name: the openclip "
                        "one exists too", kept)
            return
    # Cached search indexes live in folders named after the space (``memory/index/{space}``,
    # beside the database): ones under an old name would never be used again, nor found
    # by ``forget``, yet hold the vectors of every night they covered.
    for old in _RENAMED_SPACES:
        if (path.parent / "index" / old).is_dir():
            shutil.rmtree(path.parent / "index" / old, ignore_errors=True)


SQLITE_MAGIC = b"SQLite format 3\x00"  # the first bytes of a plain (unencrypted) database
NOT_A_DATABASE = "file is not a database"


def _refuse_encrypted_database(path: Path, exc: DatabaseError) -> None:
    """Raise a clear error for a database SQLite cannot read where no key was given (an
    encrypted memory whose key.json is gone), rather than SQLite's own words.

    Why after the fact and not by reading the file's header first: closing any descriptor
    of a SQLite file drops every POSIX lock this process holds on it, so a plain ``open``
    while another engine of this process is mid-transaction would let writers collide.
    """
    if NOT_A_DATABASE in str(exc):
        raise MasterKeyError(f"{path} is encrypted (or not a database) and the memory has no "
                             "memory/key.json to open it with: restore key.json, or "
                             "`sleep.py key init --restore FILE` from an exported key") from None


def _name_an_unfinished_sealing(path: Path) -> None:
    """A memory with a key whose database is still plaintext: `sleep.py key seal` was stopped
    before its last step (or never run). Say so, rather than "wrong key".

    The header is read only here, after this process's connection failed and was disposed
    of: no lock of ours on the file can be dropped by the close.
    """
    try:
        with open(path, "rb") as fh:
            plain = fh.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return
    if plain:
        raise MasterKeyError(f"{path} is not encrypted yet, though the memory has a key: "
                             "finish sealing it with `sleep.py key seal`") from None


def open_database(path: Path) -> Engine:
    """Open (creating if needed) the memory database at ``path``; owner-only permissions."""
    # Imported for their side effect of registering tables on Base.metadata.
    from memory import catalog, checkpoints, episodes, journal, ledger, maps, neurons, schema, uses

    refuse_network_filesystem(path.parent)  # before anything is created there
    # The database is memory/episodic.sqlite: its root is two folders up. A sealed memory's
    # key (unlocked once per process) opens it through SQLCipher; a missing key raises
    # before the folder or the file is touched.
    keyring = vault(path.parent.parent)
    make_private_dir(path.parent)
    if keyring.sealing:
        from memory.cipher_db import cipher_engine  # sqlcipher3 is loaded only for a sealed memory

        engine = cipher_engine(path, keyring.master_key)
    else:
        engine = create_engine(f"sqlite:///{path}", future=True)
        event.listen(engine, "connect", _on_connect)
    try:
        Base.metadata.create_all(engine)
    except DatabaseError as exc:
        if not keyring.sealing:
            _refuse_encrypted_database(path, exc)
        raise
    except SleepError:  # the cipher engine's DatabaseKeyError
        engine.dispose()
        _name_an_unfinished_sealing(path)
        raise
    with engine.begin() as connection:  # create_all adds no index to a table made before it existed
        connection.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_shard_rows_frame ON shard_rows (frame_id)")
        _add_missing_columns(connection)
    _rename_clip_spaces(engine, path)
    for suffix in ("", "-wal", "-shm"):
        candidate = Path(f"{path}{suffix}")
        if candidate.exists():
            os.chmod(candidate, 0o600)
    return engine


# Columns added to tables after their first release: ``create_all`` adds none to a table that
# exists, so an older memory gets them here, NULL for the rows it already holds.
_LATER_COLUMNS = (("shards", "block_sums", "BLOB"), ("shards", "verified_at", "DATETIME"))


def _add_missing_columns(connection) -> None:
    for table, column, kind in _LATER_COLUMNS:
        have = {row[1] for row in connection.exec_driver_sql(f"PRAGMA table_info({table})")}
        if column not in have:
            try:
                connection.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            except OperationalError as exc:  # another process opening it added it first
                if "duplicate column" not in str(exc):
                    raise


def make_sessionmaker(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False, future=True)
