"""The memory database through SQLCipher (memory/cipher_db.py): the right key reads it back,
a wrong one is a clear error that changes nothing, and no plaintext reaches the disk."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
from sqlalchemy import text

from memory.cipher_db import (
    DatabaseKeyError,
    cipher_connect,
    cipher_engine,
    database_key,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
MARKER = "coffee with Ana at the harbour"


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def database(tmp_path) -> Path:
    """A SQLCipher database holding one journal line, its engine disposed (WAL checkpointed)."""
    path = tmp_path / "memory" / "episodic.sqlite"
    path.parent.mkdir()
    engine = cipher_engine(path, KEY)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE journal (id INTEGER PRIMARY KEY, text TEXT)"))
        conn.execute(text("INSERT INTO journal (text) VALUES (:t)"), {"t": MARKER})
    engine.dispose()
    return path


def test_the_right_key_reads_the_row_back(database):
    engine = cipher_engine(database, KEY)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT text FROM journal")).scalar_one() == MARKER
        assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar_one() == 30000
        assert conn.execute(text("PRAGMA synchronous")).scalar_one() == 2  # FULL
    engine.dispose()


def test_a_wrong_key_is_a_clear_error_and_changes_nothing(database):
    before = _digests(database.parent)
    engine = cipher_engine(database, OTHER_KEY)
    with (pytest.raises(DatabaseKeyError, match="did not open with this key") as caught,
          engine.connect() as conn):
        conn.execute(text("SELECT text FROM journal"))
    assert str(database) in str(caught.value)
    engine.dispose()
    with pytest.raises(DatabaseKeyError):
        cipher_connect(database, OTHER_KEY)
    assert _digests(database.parent) == before  # byte for byte, and no -wal or -shm made


def test_a_plain_sqlite_file_is_not_opened_as_a_memory(tmp_path):
    import sqlite3

    path = tmp_path / "plain.sqlite"
    with sqlite3.connect(path) as plain:
        plain.execute("CREATE TABLE t (x)")
    with pytest.raises(DatabaseKeyError):
        cipher_connect(path, KEY)


def test_no_plaintext_on_disk(database, tmp_path):
    # Written again with the engine open: the row lives in the WAL file too, until checkpointed.
    engine = cipher_engine(database, KEY)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO journal (text) VALUES (:t)"), {"t": MARKER + " again"})
    files = sorted(database.parent.iterdir())
    assert {p.name for p in files} >= {"episodic.sqlite", "episodic.sqlite-wal"}
    for path in files:
        stored = path.read_bytes()
        assert MARKER.encode() not in stored and b"journal" not in stored, path.name
        assert not stored.startswith(b"SQLite format 3")
    engine.dispose()


def test_the_key_is_in_no_url_or_log(database, caplog):
    engine = cipher_engine(database, KEY)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")
    engine.echo = True
    with engine.connect() as conn:
        conn.execute(text("SELECT count(*) FROM journal")).scalar_one()
    key_hex = database_key(KEY).hex()
    shown = [repr(engine.url), str(engine.url), engine.url.render_as_string(hide_password=False),
             repr(engine), caplog.text]
    assert not any(key_hex in s or KEY.hex() in s for s in shown)
    assert engine.url.password is None
    engine.dispose()


def test_raw_connection_reads_and_writes(database):
    connection = cipher_connect(database, KEY)
    try:
        assert connection.execute("SELECT text FROM journal").fetchone() == (MARKER,)
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        connection.close()


def test_the_database_key_is_derived_not_the_master_key():
    assert database_key(KEY) != KEY and len(database_key(KEY)) == 32
    with pytest.raises(ValueError):
        database_key(KEY[:16])


def test_the_memory_schema_is_created_on_it(tmp_path):
    """What open_database does on a plain engine works on this one (the wiring's next step)."""
    from memory import catalog, episodes, journal, ledger, maps, neurons, schema  # noqa: F401 (tables)
    from memory.db import Base

    path = tmp_path / "episodic.sqlite"
    engine = cipher_engine(path, KEY)
    Base.metadata.create_all(engine)
    with engine.connect() as conn:
        tables = set(conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'")).scalars())
    engine.dispose()
    assert set(Base.metadata.tables) <= tables
