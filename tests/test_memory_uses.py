"""When each day was last used (memory.uses): the order re-embedding takes when it cannot do all."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from core.paths import Paths
from memory import by_last_use, open_database, record_use
from memory.uses import DayUse


def test_days_go_oldest_last_use_first(tmp_path):
    engine = open_database(Paths.at(tmp_path).database)
    try:
        days = ["2026-01-15", "2026-01-16", "2026-01-17", "2026-01-18"]
        with Session(engine) as session:
            assert by_last_use(session, reversed(days)) == days  # none used: oldest first, as recorded
        assert record_use(engine, ["2026-01-15"], when=dt.datetime(2026, 2, 1, 9, 0))
        assert record_use(engine, ["2026-01-17", "2026-01-15"], when=dt.datetime(2026, 2, 3, 9, 0))
        assert record_use(engine, ["2026-01-16"], when=dt.datetime(2026, 2, 2, 9, 0))
        with Session(engine) as session:
            # 01-18 was last used on its own night; then 01-16 (Feb 2), then 01-15 and 01-17 (Feb 3).
            assert by_last_use(session, days) == ["2026-01-18", "2026-01-16", "2026-01-15", "2026-01-17"]
            uses = {u.date: (u.last_used, u.uses) for u in session.scalars(select(DayUse))}
        assert uses["2026-01-15"] == ("2026-02-03T09:00:00", 2)
        assert uses["2026-01-16"] == ("2026-02-02T09:00:00", 1)
        assert record_use(engine, [])  # nothing to record
    finally:
        engine.dispose()


def test_a_use_the_memory_cannot_take_is_not_an_error(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'no-such-folder' / 'episodic.sqlite'}")
    assert record_use(engine, ["2026-01-15"]) is False


def test_forget_removes_the_days_use(tmp_path):
    from memory.forget import forget_day

    paths = Paths.at(tmp_path)
    engine = open_database(paths.database)
    try:
        record_use(engine, ["2026-01-15", "2026-01-16"])
    finally:
        engine.dispose()
    forget_day(paths, dt.date(2026, 1, 15))
    engine = open_database(paths.database)
    try:
        with Session(engine) as session:
            assert [u.date for u in session.scalars(select(DayUse))] == ["2026-01-16"]
    finally:
        engine.dispose()


def test_a_use_does_not_wait_for_a_night_holding_the_write_lock(tmp_path):
    import sqlite3
    import time

    paths = Paths.at(tmp_path)
    engine = open_database(paths.database)
    night = sqlite3.connect(paths.database)
    try:
        night.execute("BEGIN IMMEDIATE")  # a night's write transaction in another connection
        started = time.monotonic()
        assert record_use(engine, ["2026-01-15"]) is False
        assert time.monotonic() - started < 5  # not the memory's 30 s busy timeout
        night.rollback()
        assert record_use(engine, ["2026-01-15"])  # and the connection is usable afterwards
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    finally:
        night.close()
        engine.dispose()
