"""Which model version of each space queries read, and how much of the memory each version covers.

Every night's encoders write a new version (``jepa@{date}``...) that holds, at first, only
that night's day. The stage ``reembed`` moves earlier days into it; until it covers every
day, queries keep reading the version that does. Two tables hold that state:

- ``active_versions``: one row per space naming the version queries read. It is switched by
  :func:`activate_if_complete` in the same transaction that checks the coverage, so a
  version is never active half-built. With no row (a memory from before this table, or a
  space ``reembed`` does not manage, such as ``openclip``), :func:`active_version` takes the
  newest complete version, else the newest version: what searches read before.
- ``reembedded_days``: one row per (version, day) that ``reembed`` finished, with the clips
  it wrote and the clips it could not (no keyframe nor frame left on disk, say). A day
  whose clips were all missing has no shard in the version but still counts as done. Each
  row points at a shard of that day (the one written, else the day's shard in the version
  it came from) with ``ON DELETE CASCADE``, so forgetting the day takes the row along.

Coverage is measured against every day that has vectors in the space in any version: the
version's own day, plus those re-embedded into it.
"""
from __future__ import annotations

import datetime as dt

from sqlalchemy import DateTime, Engine, Float, ForeignKey, Integer, String, func, select
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from memory.catalog import EmbeddingSpace, Shard, ShardRow, latest_version, spaces
from memory.db import Base


class ActiveVersion(Base):
    __tablename__ = "active_versions"

    space: Mapped[str] = mapped_column(String(32), primary_key=True)
    # The version row itself: forgetting the last day of a version (which deletes the row)
    # drops the switch too, and queries fall back to the newest complete version.
    space_id: Mapped[int] = mapped_column(ForeignKey("embedding_spaces.id", ondelete="CASCADE"))
    switched_at: Mapped[dt.datetime] = mapped_column(DateTime, default=dt.datetime.now)


class ReembeddedDay(Base):
    __tablename__ = "reembedded_days"

    space_id: Mapped[int] = mapped_column(ForeignKey("embedding_spaces.id", ondelete="CASCADE"),
                                          primary_key=True)
    date: Mapped[str] = mapped_column(String(10), primary_key=True)
    shard_id: Mapped[int] = mapped_column(ForeignKey("shards.id", ondelete="CASCADE"), index=True)
    clips: Mapped[int] = mapped_column(Integer)  # clips written
    missing: Mapped[int] = mapped_column(Integer)  # clips of the day that could not be
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=dt.datetime.now)


def version_date(version: str) -> str | None:
    """The night a ``{model}@{date}`` version was trained, or ``None`` for another kind of name."""
    _, _, date = version.partition("@")
    try:
        return dt.date.fromisoformat(date).isoformat()
    except ValueError:
        return None


def _space_id(session: Session, space: str, version: str) -> int | None:
    return session.scalar(select(EmbeddingSpace.id).where(EmbeddingSpace.name == space,
                                                          EmbeddingSpace.model_version == version))


def _versions(session: Session, space: str) -> list[tuple[int, str]]:
    """``(space_id, version)`` of every version of ``space`` holding a complete shard, oldest first."""
    return list(session.execute(
        select(EmbeddingSpace.id, EmbeddingSpace.model_version)
        .where(EmbeddingSpace.name == space,
               EmbeddingSpace.id.in_(select(Shard.space_id).where(Shard.complete.is_(True))))
        .order_by(EmbeddingSpace.id)).all())


def space_days(session: Session, space: str) -> list[str]:
    """Every day that has vectors in ``space``, in any version, oldest first."""
    return list(session.scalars(
        select(Shard.date).distinct().join(EmbeddingSpace, EmbeddingSpace.id == Shard.space_id)
        .where(EmbeddingSpace.name == space, Shard.complete.is_(True)).order_by(Shard.date)))


def _shard_days(session: Session, space_id: int) -> set[str]:
    return set(session.scalars(select(Shard.date).where(Shard.space_id == space_id,
                                                        Shard.complete.is_(True))))


def reembedded_days(session: Session, space: str, version: str) -> dict[str, dict]:
    """The days ``reembed`` finished for one version: ``{date: {"clips", "missing", "seconds"}}``."""
    space_id = _space_id(session, space, version)
    if space_id is None:
        return {}
    rows = session.execute(select(ReembeddedDay.date, ReembeddedDay.clips, ReembeddedDay.missing,
                                  ReembeddedDay.seconds).where(ReembeddedDay.space_id == space_id))
    return {date: {"clips": clips, "missing": missing, "seconds": seconds}
            for date, clips, missing, seconds in rows}


def _covered(session: Session, space_id: int) -> set[str]:
    done = session.scalars(select(ReembeddedDay.date).where(ReembeddedDay.space_id == space_id))
    return _shard_days(session, space_id) | set(done)


def covered_days(engine: Engine, space: str, version: str) -> set[str]:
    """The days one version of ``space`` answers for: its own shards and the days re-embedded into it."""
    with Session(engine) as session:
        space_id = _space_id(session, space, version)
        return _covered(session, space_id) if space_id is not None else set()


def days_to_reembed(session: Session, space: str, version: str) -> list[str]:
    """The days ``version`` still lacks, oldest first: days with vectors in another version of
    ``space`` before the version's own night, that ``reembed`` has not finished.

    A day with a shard but no ``reembedded_days`` row (a run killed between the two writes)
    is listed again: redoing it writes the same vectors and records the count of missing clips.
    """
    space_id = _space_id(session, space, version)
    own = version_date(version)
    done = set(session.scalars(select(ReembeddedDay.date).where(ReembeddedDay.space_id == space_id))) \
        if space_id is not None else set()
    if own is None:  # not a nightly version (openclip's are named by their weights)
        return []
    return [d for d in space_days(session, space) if d < own and d not in done]


def day_clips(session: Session, space: str, date: str, exclude_version: str) -> list[tuple[int, str]]:
    """What ``space`` held of a day before ``exclude_version``: ``(clip_id, modality)`` pairs of
    the newest other version's shard of that day, sorted; the clips a re-embedding should cover."""
    shard_id = session.scalar(
        select(Shard.id).join(EmbeddingSpace, EmbeddingSpace.id == Shard.space_id)
        .where(EmbeddingSpace.name == space, EmbeddingSpace.model_version != exclude_version,
               Shard.date == date, Shard.complete.is_(True))
        .order_by(EmbeddingSpace.id.desc()).limit(1))
    if shard_id is None:
        return []
    return sorted(set(session.execute(select(ShardRow.clip_id, ShardRow.modality)
                                      .where(ShardRow.shard_id == shard_id)).all()))


def record_day(engine: Engine, *, space: str, version: str, date: str, clips: int, missing: int,
               seconds: float) -> None:
    """Record that ``reembed`` finished ``date`` for ``version`` (after its shard, if any, was written).

    Raises:
        ValueError: the version does not exist, or the day has no shard to tie the record to.
    """
    with Session(engine) as session, session.begin():
        space_id = _space_id(session, space, version)
        if space_id is None:
            raise ValueError(f"space {space} has no version {version}")
        # The version's own shard of the day, else the newest other version's: the one that
        # made the day worth re-embedding (so that forgetting the day removes this row).
        shard_id = session.scalar(
            select(Shard.id).join(EmbeddingSpace, EmbeddingSpace.id == Shard.space_id)
            .where(EmbeddingSpace.name == space, Shard.date == date, Shard.complete.is_(True))
            .order_by((EmbeddingSpace.id == space_id).desc(), EmbeddingSpace.id.desc()).limit(1))
        if shard_id is None:
            raise ValueError(f"space {space} has no shard of {date}")
        values = {"space_id": space_id, "date": date, "shard_id": shard_id, "clips": clips,
                  "missing": missing, "seconds": round(seconds, 3), "created_at": dt.datetime.now()}
        stmt = insert(ReembeddedDay).values(values)
        session.execute(stmt.on_conflict_do_update(
            index_elements=[ReembeddedDay.space_id, ReembeddedDay.date],
            set_={k: stmt.excluded[k] for k in values if k not in ("space_id", "date")}))


def _coverage(session: Session, space: str, space_id: int, version: str, days: list[str]) -> dict:
    covered = _covered(session, space_id)
    missing = session.scalar(select(func.coalesce(func.sum(ReembeddedDay.missing), 0))
                             .where(ReembeddedDay.space_id == space_id))
    clips = session.scalar(select(func.count(ShardRow.clip_id.distinct()))
                           .join(Shard, Shard.id == ShardRow.shard_id)
                           .where(Shard.space_id == space_id, Shard.complete.is_(True)))
    lacking = [d for d in days if d not in covered]
    return {"space": space, "version": version, "clips": int(clips or 0), "days": len(days) - len(lacking),
            "days_total": len(days), "days_missing": lacking, "missing_clips": int(missing or 0),
            "complete": not lacking}


def coverage(engine: Engine, space: str, version: str) -> dict:
    """How much of the memory one version of a space covers.

    Returns:
        ``{"space", "version", "clips": clips with a vector in it, "days": days covered,
        "days_total": days with vectors in the space in any version, "days_missing": [dates
        not covered yet], "missing_clips": clips of covered days that could not be
        re-embedded, "complete": whether it covers every day}``; all zero for an unknown version.
    """
    with Session(engine) as session:
        days = space_days(session, space)
        space_id = _space_id(session, space, version)
        if space_id is None:
            return {"space": space, "version": version, "clips": 0, "days": 0, "days_total": len(days),
                    "days_missing": days, "missing_clips": 0, "complete": False}
        return _coverage(session, space, space_id, version, days)


def _newest_complete(session: Session, space: str) -> str | None:
    days = set(space_days(session, space))
    for space_id, version in reversed(_versions(session, space)):
        if days <= _covered(session, space_id):
            return version
    return None


def _active_row(session: Session, space: str) -> str | None:
    return session.scalar(select(EmbeddingSpace.model_version)
                          .join(ActiveVersion, ActiveVersion.space_id == EmbeddingSpace.id)
                          .where(ActiveVersion.space == space))


def active_version(engine: Engine, space: str) -> str | None:
    """The version of ``space`` that queries read.

    The switched-to version when there is one; otherwise (a memory from before this was
    recorded, or a space ``reembed`` does not manage) the newest version that covers every
    day, else the newest version; ``None`` when the space holds nothing.
    """
    with Session(engine) as session:
        found = _active_row(session, space) or _newest_complete(session, space)
    return found or latest_version(engine, space)


def activate(session: Session, space: str, version: str) -> None:
    """Make ``version`` the one queries of ``space`` read (inside the caller's transaction).

    Raises:
        ValueError: ``space`` has no such version.
    """
    space_id = _space_id(session, space, version)
    if space_id is None:
        raise ValueError(f"space {space} has no version {version}")
    stmt = insert(ActiveVersion).values(space=space, space_id=space_id, switched_at=dt.datetime.now())
    session.execute(stmt.on_conflict_do_update(
        index_elements=[ActiveVersion.space],
        set_={"space_id": stmt.excluded.space_id, "switched_at": stmt.excluded.switched_at}))


def activate_if_complete(engine: Engine, space: str, version: str) -> bool:
    """Switch ``space`` to ``version`` when it covers every day, in one transaction.

    An older version never replaces a newer active one (re-embedding into an old version on
    demand fills it in, nothing more).

    Returns:
        whether ``version`` is the active one afterwards.
    """
    with Session(engine) as session, session.begin():
        space_id = _space_id(session, space, version)
        if space_id is None:
            return False
        current = _active_row(session, space)
        if current == version:
            return True
        if not _coverage(session, space, space_id, version, space_days(session, space))["complete"]:
            return False
        if current is not None and (version_date(version) or "") < (version_date(current) or ""):
            return False
        activate(session, space, version)
        return True


def version_table(engine: Engine) -> list[dict]:
    """Every version of every space: its coverage and whether queries read it.

    Returns:
        one :func:`coverage` dict per (space, version), spaces in :func:`memory.catalog.spaces`
        order and versions oldest first, each with ``"active"`` (bool) and ``"switched_at"``
        (ISO time of the switch, ``None`` when chosen by the fallback or not active).
    """
    out = []
    names = spaces(engine)
    with Session(engine) as session:
        switched = dict(session.execute(select(ActiveVersion.space, ActiveVersion.switched_at)).all())
    for name in names:
        active = active_version(engine, name)
        with Session(engine) as session:
            days = space_days(session, name)
            for space_id, version in _versions(session, name):
                row = _coverage(session, name, space_id, version, days)
                row["active"] = version == active
                when = switched.get(name) if row["active"] else None
                row["switched_at"] = when.isoformat(timespec="seconds") if when else None
                out.append(row)
    return out
