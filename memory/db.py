"""The SQLite database (``memory/episodic.sqlite``): engine set-up and the ORM base.

WAL mode lets queries read while a night writes; a busy timeout makes writers wait for
each other instead of failing.
"""
from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase, sessionmaker

from core.paths import make_private_dir


class Base(DeclarativeBase):
    pass


def _on_connect(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def open_database(path: Path) -> Engine:
    """Open (creating if needed) the memory database at ``path``; owner-only permissions."""
    # Imported for their side effect of registering tables on Base.metadata.
    from memory import catalog, ledger, schema

    make_private_dir(path.parent)
    engine = create_engine(f"sqlite:///{path}", future=True)
    event.listen(engine, "connect", _on_connect)
    Base.metadata.create_all(engine)
    for suffix in ("", "-wal", "-shm"):
        candidate = Path(f"{path}{suffix}")
        if candidate.exists():
            os.chmod(candidate, 0o600)
    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False, future=True)
