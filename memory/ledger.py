"""The stage ledger: one row per (night, stage) saying whether it is done, and with what.

A stage is skipped on a rerun when its row is ``done`` with the same config hash. A row
left ``running`` by a killed process reads as interrupted once nobody holds the lock.
The stage's result (what it reported) is kept so the report can be rebuilt without
rerunning it.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import JSON, DateTime, Float, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from memory.db import Base


class StageRun(Base):
    __tablename__ = "stage_runs"

    date: Mapped[str] = mapped_column(String(10), primary_key=True)
    stage: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # running | done | failed
    config_hash: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[dt.datetime] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict | None] = mapped_column(JSON, nullable=True)


@dataclass(frozen=True)
class StageState:
    date: str
    stage: str
    status: str
    config_hash: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    seconds: float | None
    error: str | None
    attempts: int
    result: dict | None

    def as_dict(self) -> dict:
        return {
            "status": self.status,
            "seconds": self.seconds,
            "error": self.error,
            "attempts": self.attempts,
            "config_hash": self.config_hash,
            "started_at": self.started_at.isoformat(timespec="seconds") if self.started_at else None,
            "finished_at": self.finished_at.isoformat(timespec="seconds") if self.finished_at else None,
        }


def _state(row: StageRun) -> StageState:
    return StageState(row.date, row.stage, row.status, row.config_hash, row.started_at,
                      row.finished_at, row.seconds, row.error, row.attempts, row.result)


def get(session: Session, date: str, stage: str) -> StageState | None:
    row = session.get(StageRun, (date, stage))
    return _state(row) if row else None


def is_done(session: Session, date: str, stage: str, config_hash: str) -> bool:
    row = session.get(StageRun, (date, stage))
    return bool(row and row.status == "done" and row.config_hash == config_hash)


def mark_started(session: Session, date: str, stage: str, config_hash: str) -> None:
    row = session.get(StageRun, (date, stage)) or StageRun(date=date, stage=stage, attempts=0)
    row.status = "running"
    row.config_hash = config_hash
    row.started_at = dt.datetime.now()
    row.finished_at = None
    row.seconds = None
    row.error = None
    row.result = None
    row.attempts = (row.attempts or 0) + 1
    session.add(row)
    session.commit()


def mark_finished(session: Session, date: str, stage: str, *, seconds: float,
                  result: dict | None = None, error: str | None = None) -> None:
    row = session.get(StageRun, (date, stage))
    row.status = "failed" if error else "done"
    row.finished_at = dt.datetime.now()
    row.seconds = seconds
    row.error = error
    row.result = result
    session.commit()


def night(session: Session, date: str) -> list[StageState]:
    rows = session.scalars(select(StageRun).where(StageRun.date == date).order_by(StageRun.started_at))
    return [_state(r) for r in rows]


def all_nights(session: Session) -> dict[str, list[StageState]]:
    nights: dict[str, list[StageState]] = {}
    for row in session.scalars(select(StageRun).order_by(StageRun.date, StageRun.started_at)):
        nights.setdefault(row.date, []).append(_state(row))
    return nights
