"""When each day's memories were last used: the order re-embedding takes when it cannot do all.

A day is used when it is recorded (its night) and whenever a query returns one of its
moments (``api.query`` calls :func:`record_use`). Where a night's time budget does not cover
every earlier day, ``reembed`` moves the days into tonight's version oldest last use first
(:func:`by_last_use`), as #14 asks; the rest are reached through the fitted map meanwhile
and wait for the following nights.

Recording a use is a convenience, never a reason for a query to fail: a memory another
process is writing (a night) or a read-only one leaves the use unrecorded, with a debug line.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable

from sqlalchemy import Engine, Integer, String, select
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Mapped, Session, mapped_column

from memory.db import Base

log = logging.getLogger(__name__)
USE_WAIT_MS = 250  # how long recording a use waits for another writer
DEFAULT_WAIT_MS = 30000  # memory/db.py's busy timeout, restored for the pooled connection


class DayUse(Base):
    __tablename__ = "day_uses"

    date: Mapped[str] = mapped_column(String(10), primary_key=True)  # YYYY-MM-DD of the day's night
    last_used: Mapped[str] = mapped_column(String(32))  # ISO local time of the last query that returned it
    uses: Mapped[int] = mapped_column(Integer, default=0)  # queries that returned it


def record_use(engine: Engine, dates: Iterable[str], when: dt.datetime | None = None) -> bool:
    """Mark ``dates`` used now (or at ``when``); ``False`` when the memory could not take the write."""
    days = sorted(set(dates))
    if not days:
        return True
    stamp = (when or dt.datetime.now()).isoformat(timespec="seconds")
    statement = insert(DayUse).values([{"date": d, "last_used": stamp, "uses": 1} for d in days])
    statement = statement.on_conflict_do_update(
        index_elements=[DayUse.date],
        set_={"last_used": statement.excluded.last_used, "uses": DayUse.uses + 1})
    try:
        with engine.connect() as connection:
            # A query must not wait the memory's 30 s busy timeout on a night's write: a use is
            # worth a quarter of a second at most.
            connection.exec_driver_sql(f"PRAGMA busy_timeout={USE_WAIT_MS}")
            try:
                connection.execute(statement)
                connection.commit()
            finally:
                connection.rollback()  # nothing, after a commit; the failed write's otherwise
                connection.exec_driver_sql(f"PRAGMA busy_timeout={DEFAULT_WAIT_MS}")
                connection.commit()
    except OperationalError as exc:  # locked by a night past USE_WAIT_MS, or read-only
        log.debug("the use of %s was not recorded: %s", ", ".join(days), exc)
        return False
    return True


def by_last_use(session: Session, days: Iterable[str]) -> list[str]:
    """``days`` oldest last use first; a day no query has returned was last used on its own date,
    and days used alike go oldest first."""
    days = sorted(set(days))
    used = {date: last for date, last in session.execute(select(DayUse.date, DayUse.last_used))}  # a row a day
    # A date ("2026-01-15") sorts before any time on it ("2026-01-15T08:00:00") and after every earlier one.
    return sorted(days, key=lambda d: (used.get(d, d), d))
