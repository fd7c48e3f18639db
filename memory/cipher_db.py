"""The memory database encrypted with SQLCipher, for ``memory.encryption: on``.

SQLCipher encrypts every page of the database and of its WAL with a raw 256-bit key
derived from the master key (:func:`database_key`). The key reaches SQLite only through a
``PRAGMA key`` run first on each new connection: the engine's URL is built with
``URL.create`` and holds the path alone, so the key is never in a URL string, a
``repr(engine.url)`` or a SQLAlchemy log line. The dialect is plain ``sqlite`` with the
``sqlcipher3`` module as its DB-API (SQLAlchemy's ``pysqlcipher`` dialect would run its own
``PRAGMA key`` from the URL's password, refusing an empty one), so pooling and every other
behaviour match :func:`memory.db.open_database`'s engine.

A wrong key fails on the first read of the first page, before anything is written:
:class:`DatabaseKeyError` names the file, which is left as it was.
"""
from __future__ import annotations

import os
from pathlib import Path

import sqlcipher3
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL

from core.errors import SleepError
from core.keys import MASTER_KEY_BYTES, derive_key
from memory.db import _on_connect as _set_pragmas

DATABASE_KEY_PURPOSE = "memory database v1"
BUSY_TIMEOUT_S = 30.0  # as memory/db.py's PRAGMA busy_timeout=30000


class DatabaseKeyError(SleepError):
    """The memory database did not open with this key (or is no SQLCipher database)."""


def database_key(master_key: bytes) -> bytes:
    """The database's own 32-byte key, derived from the memory's master key."""
    if len(master_key) != MASTER_KEY_BYTES:
        raise ValueError(f"a master key is {MASTER_KEY_BYTES} bytes, not {len(master_key)}")
    return derive_key(master_key, DATABASE_KEY_PURPOSE)


def _unlock(dbapi_conn, path: Path, key_hex: str) -> None:
    """Give SQLCipher the key, then read page 1 to learn whether it was the right one.

    Why the read: SQLCipher accepts any key and fails only at the first page it decrypts;
    read here, a wrong key is named as such, and before ``journal_mode=WAL`` (a write).
    A new, empty file reads as an empty database under any key: it is being created.
    """
    cursor = dbapi_conn.cursor()
    try:
        # A blob literal: SQLCipher uses the 32 bytes as they are, with no passphrase KDF.
        cursor.execute(f"PRAGMA key = \"x'{key_hex}'\"")
        # Set before the first read, which takes a shared lock a night's writer may hold.
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        # SQLCipher prints its own lines to stderr for a page that does not decrypt; the
        # error below says it once, naming the file. (The level is process-wide: restored.)
        level = cursor.execute("PRAGMA cipher_log_level").fetchone()[0]
        cursor.execute("PRAGMA cipher_log_level = NONE")
        try:
            cursor.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlcipher3.DatabaseError as exc:
            if "file is not a database" not in str(exc):
                raise
            raise DatabaseKeyError(f"{path}: the memory database did not open with this key "
                                   "(another memory's key, or the file is damaged)") from None
        finally:
            cursor.execute(f"PRAGMA cipher_log_level = {level}")
    finally:
        cursor.close()


def cipher_engine(path: Path, master_key: bytes) -> Engine:
    """A SQLAlchemy engine on the SQLCipher database at ``path``, created on first use.

    Each new connection gets the key, then the pragmas of :func:`memory.db._on_connect`
    (WAL, foreign keys, busy timeout, synchronous=FULL). Nothing connects until the
    engine is first used.

    Args:
        path: ``memory/episodic.sqlite``.
        master_key: the memory's 32-byte master key (:func:`core.keys.unlock`).
    Returns:
        the engine; its URL names the path only.
    Raises:
        DatabaseKeyError: on first use, when the key does not open the file.
    """
    key_hex = database_key(master_key).hex()
    engine = create_engine(URL.create("sqlite", database=str(path)), module=sqlcipher3, future=True)

    def on_connect(dbapi_conn, record) -> None:
        _unlock(dbapi_conn, path, key_hex)
        _set_pragmas(dbapi_conn, record)

    # insert=True: before SQLAlchemy's own first-connect hook, which reads the database to
    # learn its dialect settings and would meet encrypted pages without a key.
    event.listen(engine, "connect", on_connect, insert=True)
    return engine


def cipher_connect(path: str | os.PathLike, master_key: bytes, **kwargs) -> sqlcipher3.Connection:
    """A DB-API connection to the SQLCipher database at ``path``, like ``sqlite3.connect``.

    For code that uses raw connections (the doctor's worker processes): the same key and
    pragmas as :func:`cipher_engine`.

    Args:
        path: the database file.
        master_key: the memory's 32-byte master key.
        kwargs: passed to ``sqlcipher3.connect`` (``timeout`` defaults to 30 s).
    Raises:
        DatabaseKeyError: the key does not open the file (the connection is closed).
    """
    kwargs.setdefault("timeout", BUSY_TIMEOUT_S)
    connection = sqlcipher3.connect(os.fspath(path), **kwargs)
    try:
        _unlock(connection, Path(path), database_key(master_key).hex())
        _set_pragmas(connection, None)
    except BaseException:
        connection.close()
        raise
    return connection
