"""The journal's part of ``forget`` and ``doctor`` (:mod:`memory.forget`, :mod:`memory.doctor` call these).

Forgetting a day removes its entries and every journal shard of that date (in any space
and version: a ``text_sae`` version holds every day's entries, one shard per day). The doctor
checks each journal shard's file against its row, vectors whose entry is gone (compacted
away on repair), and entries with no vector in the newest ``text`` version (named with the
command that embeds them: the memory package has no model to do it with).
"""
from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from core.paths import Paths
from memory.journal import (
    JournalEntry,
    JournalShard,
    JournalVector,
    write_entry_vectors,
)
from memory.shards import read_rows, shard_problem

TEXT_SPACE = "text"


def day_counts(session: Session, day: str) -> dict:
    """What forgetting ``day`` removes from the journal's tables, by table."""
    shard_ids = select(JournalShard.id).where(JournalShard.date == day)

    def count(model, *where):
        return session.scalar(select(func.count()).select_from(model).where(*where))

    return {"journal_entries": count(JournalEntry, JournalEntry.date == day),
            "journal_shards": count(JournalShard, JournalShard.date == day),
            "journal_vectors": count(JournalVector, JournalVector.shard_id.in_(shard_ids))}


def day_shard_paths(session: Session, day: str) -> list[str]:
    return list(session.scalars(select(JournalShard.path).where(JournalShard.date == day)))


def delete_day(session: Session, day: str) -> None:
    """Delete ``day``'s entries and journal shards (rows only; the caller removes the files after
    the commit, as for every other shard)."""
    entry_ids = select(JournalEntry.id).where(JournalEntry.date == day)
    session.execute(delete(JournalVector).where(JournalVector.entry_id.in_(entry_ids)))
    session.execute(delete(JournalVector).where(JournalVector.shard_id.in_(
        select(JournalShard.id).where(JournalShard.date == day))))
    session.execute(delete(JournalShard).where(JournalShard.date == day))
    session.execute(delete(JournalEntry).where(JournalEntry.date == day))


def known_paths(session: Session) -> set[str]:
    """Every journal shard file the database names (the doctor's stray-file check)."""
    return set(session.scalars(select(JournalShard.path)))


def check(session: Session, paths: Paths, report) -> list[int]:
    """Journal shards against their files and entries; returns the shards to compact.

    Args:
        session: an open session (the caller commits on repair).
        paths: the root's layout.
        report: the doctor's report (``problem(text, fix) -> repair now?``, ``after_commit``).
    """
    counts = {sid: (n, hi) for sid, n, hi in session.execute(
        select(JournalVector.shard_id, func.count(), func.max(JournalVector.row)).group_by(JournalVector.shard_id))}
    compact = []
    for shard in session.scalars(select(JournalShard).order_by(JournalShard.id)).all():
        what = f"journal shard {shard.path} ({shard.space}, {shard.date})"
        found = shard_problem(paths, shard)
        if found is not None:
            if report.problem(f"{what}: file {found}, database says ({shard.rows}, {shard.dim})",
                              "removed it; rerun that night's journal stage"):
                session.execute(delete(JournalShard).where(JournalShard.id == shard.id))
                report.after_commit(shard.path, (paths.root / shard.path).unlink)
            continue
        n, hi = counts.get(shard.id, (0, None))
        if hi is not None and hi >= shard.rows and report.problem(
                f"{what}: database rows point past its {shard.rows} vectors", "dropped those rows"):
            session.execute(delete(JournalVector).where(JournalVector.shard_id == shard.id,
                                                        JournalVector.row >= shard.rows))
            n = session.scalar(select(func.count()).select_from(JournalVector)
                               .where(JournalVector.shard_id == shard.id))
        if n < shard.rows and report.problem(
                f"{what}: {shard.rows - n} vectors whose journal entries are gone", "rewrote the shard without them"):
            compact.append(shard.id)
    newest = session.scalars(select(JournalShard.model_version).where(JournalShard.space == TEXT_SPACE)
                             .order_by(JournalShard.id.desc()).limit(1)).first()
    if newest is not None:
        have = select(JournalVector.entry_id).join(JournalShard, JournalShard.id == JournalVector.shard_id).where(
            JournalShard.space == TEXT_SPACE, JournalShard.model_version == newest)
        missing = session.execute(select(JournalEntry.date, func.count()).where(~JournalEntry.id.in_(have))
                                  .group_by(JournalEntry.date).order_by(JournalEntry.date)).all()
        for day, n in missing:
            # Not repairable here (memory/ holds no model): the journal stage embeds them.
            report.problem(f"journal {day}: {n} entries have no {TEXT_SPACE} vector in {newest}; run "
                           f"`sleep.py --date {day} --only journal --force` to embed them")
    return compact


def compact(engine, paths: Paths, shard_ids: list[int]) -> None:
    """Rewrite each shard with only the vectors whose entry is still there (none left: drop it)."""
    for shard_id in shard_ids:
        with Session(engine) as session:
            shard = session.get(JournalShard, shard_id)
            if shard is None:
                continue
            kept = session.execute(select(JournalVector.row, JournalVector.entry_id)
                                   .where(JournalVector.shard_id == shard_id).order_by(JournalVector.row)).all()
        if not kept:
            with Session(engine) as session, session.begin():
                session.execute(delete(JournalShard).where(JournalShard.id == shard_id))
            (paths.root / shard.path).unlink(missing_ok=True)
            continue
        write_entry_vectors(engine, paths, space=shard.space, model_version=shard.model_version, date=shard.date,
                            entry_ids=[e for _, e in kept], vectors=read_rows(paths, shard, [r for r, _ in kept]))
