"""``sleep.py forget --date D``: remove one day from the memory, completely.

"Forget" means the person wants the day gone: its database rows (sources, clips, frames,
audio segments, keepsakes, embedding shards and their rows, the ledger), its shard files,
its recordings (``data/raw/D``), derived media, its keepsakes (``memory/keep/D``), its
report, cached search indexes that hold its vectors, and the probe set when it was cut from
that day (``memory/probes``; the next night with video cuts a new one). Other days are
untouched. Model checkpoints are kept: they were trained on many days and cannot be
unpicked from one.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from pathlib import Path

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from core.lock import NightLock
from core.paths import Paths
from core.sealed import SealedFileError
from memory import episodes, journal_care
from memory.catalog import EmbeddingSpace, Shard, ShardRow
from memory.db import open_database
from memory.keepsakes import KeepsakeRow
from memory.ledger import StageRun
from memory.schema import AudioSegment, Clip, Frame, Source
from memory.shards import day_files
from memory.uses import DayUse

log = logging.getLogger(__name__)


def probes_folder(paths: Paths) -> Path:
    """Where stage ``probes`` keeps the fixed probe set: its photos, sounds and ``manifest.json``."""
    return paths.memory / "probes"


def probe_set_date(paths: Paths) -> str | None:
    """The day the stored probe set was cut from (``YYYY-MM-DD``), ``None`` without one."""
    try:
        return json.loads(paths.vault.read_text(probes_folder(paths) / "manifest.json"))["date"]
    except (OSError, ValueError, KeyError, TypeError, SealedFileError):
        return None


def _folders(paths: Paths, date: dt.date) -> list[Path]:
    probes = [probes_folder(paths)] if probe_set_date(paths) == date.isoformat() else []
    return [paths.raw(date), paths.clips(date), paths.frames(date), paths.audio(date),
            paths.keep(date), paths.report(date), *probes]


def _plan(session: Session, paths: Paths, date: dt.date) -> dict:
    day = date.isoformat()
    clip_ids = select(Clip.id).where(Clip.date == day)
    shard_ids = select(Shard.id).where(Shard.date == day)

    def count(model, *where):
        return session.scalar(select(func.count()).select_from(model).where(*where))

    shards = session.execute(
        select(Shard.path, EmbeddingSpace.name, EmbeddingSpace.model_version)
        .join(EmbeddingSpace, EmbeddingSpace.id == Shard.space_id).where(Shard.date == day)).all()
    files = [str(p.relative_to(paths.root)) for p in _folders(paths, date) if p.exists()]
    files += [path for path, _, _ in shards if (paths.root / path).exists()]
    files += [path for path in journal_care.day_shard_paths(session, day)
              if (paths.root / path).exists() and path not in files]
    files += [rel for rel in (str(p.relative_to(paths.root)) for p in day_files(paths, day))
              if rel not in files]
    indexes = sorted({str((paths.memory / "index" / name / version).relative_to(paths.root))
                      for _, name, version in shards
                      if (paths.memory / "index" / name / version).exists()})
    return {
        "date": day,
        "database": {
            "sources": count(Source, Source.date == day),
            "clips": count(Clip, Clip.date == day),
            "frames": count(Frame, Frame.clip_id.in_(clip_ids)),
            "audio_segments": count(AudioSegment, AudioSegment.clip_id.in_(clip_ids)),
            "keepsakes": count(KeepsakeRow, KeepsakeRow.date == day),
            "shards": len(shards),
            "shard_rows": count(ShardRow, ShardRow.shard_id.in_(shard_ids)),
            "stage_runs": count(StageRun, StageRun.date == day),
            **journal_care.day_counts(session, day),
            **episodes.day_counts(session, day),
        },
        "files": files + indexes,
    }


def plan_forget(paths: Paths, date: dt.date) -> dict:
    """What :func:`forget_day` would remove, without removing anything.

    Returns:
        ``{"date", "database": {table: rows}, "files": [paths relative to the root]}``.
    """
    if not paths.database.exists():
        return {"date": date.isoformat(), "database": {}, "files": [
            str(p.relative_to(paths.root)) for p in _folders(paths, date) if p.exists()]}
    engine = open_database(paths.database)
    try:
        with Session(engine) as session:
            return _plan(session, paths, date)
    finally:
        engine.dispose()


def forget_day(paths: Paths, date: dt.date) -> dict:
    """Remove one day from the memory (holds the night lock: never during a night).

    Args:
        paths: the root's layout.
        date: the day to forget.
    Returns:
        what was removed, in :func:`plan_forget`'s form.
    Raises:
        LockHeld: a night (or another forget) is running on this root.
    """
    day = date.isoformat()
    with NightLock(paths.lock, f"forget {day}"):
        if not paths.database.exists():
            plan = plan_forget(paths, date)
        else:
            engine = open_database(paths.database)
            try:
                with Session(engine) as session, session.begin():
                    plan = _plan(session, paths, date)
                    clip_ids = select(Clip.id).where(Clip.date == day)
                    shard_ids = select(Shard.id).where(Shard.date == day)
                    # Explicit order rather than relying on cascades: every table is named.
                    session.execute(delete(ShardRow).where(ShardRow.shard_id.in_(shard_ids)))
                    session.execute(delete(ShardRow).where(ShardRow.clip_id.in_(clip_ids)))
                    session.execute(delete(Shard).where(Shard.date == day))
                    session.execute(delete(EmbeddingSpace).where(
                        ~EmbeddingSpace.id.in_(select(Shard.space_id))))
                    episodes.delete_day(session, day)
                    session.execute(delete(KeepsakeRow).where(KeepsakeRow.date == day))
                    session.execute(delete(KeepsakeRow).where(KeepsakeRow.clip_id.in_(clip_ids)))
                    session.execute(delete(AudioSegment).where(AudioSegment.clip_id.in_(clip_ids)))
                    session.execute(delete(Frame).where(Frame.clip_id.in_(clip_ids)))
                    session.execute(delete(Clip).where(Clip.date == day))
                    session.execute(delete(Source).where(Source.date == day))
                    session.execute(delete(StageRun).where(StageRun.date == day))
                    session.execute(delete(DayUse).where(DayUse.date == day))
                    journal_care.delete_day(session, day)
            finally:
                engine.dispose()
        # Files go after the commit: a crash in between leaves files no row points at,
        # which `sleep.py doctor --repair` removes; never rows pointing at missing files.
        for rel in plan["files"]:
            target = paths.root / rel
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    log.info("forgot %s: %s; %d files or folders", day, plan["database"], len(plan["files"]))
    return plan
