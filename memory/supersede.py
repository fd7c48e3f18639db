"""Dropping the versions of a space that its active version has superseded, losing nothing.

Every night writes a whole new version of each space and ``reembed`` moves the earlier days
into it; once it is active, the older versions only take room. A version is dropped when

- it is older (by its date) than the version the ``active_versions`` table names: never the
  active one, never the newest (tonight's, maybe still being filled, and the map from it
  into the active one stays usable), never anything when the space has no row there (the
  fallback of :func:`memory.versions.active_version` is a guess, not a switch);
- and the active version holds every clip it holds: a row of the same clip on the same day
  in a complete shard (clips, as ``missing_clips`` counts them, not rows: a clip with a row
  of one sense only is found). A clip the active version could not re-embed (its keepsake
  and footage gone) still has its vector only in the old version, which is then kept, with
  the count.

Rows first, in one transaction (its shards and their rows, its ``reembedded_days``, the
version row, maps into or out of it), then files (its shard folder, its cached search
indexes, the maps' files): a crash in between leaves orphan files, which
``sleep.py doctor --repair`` removes.
"""
from __future__ import annotations

import logging
import shutil

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.orm import Session

from core.paths import Paths
from memory.catalog import EmbeddingSpace, Shard, ShardRow
from memory.maps import delete_maps
from memory.search import index_folder
from memory.shards import remove_version_files
from memory.versions import ActiveVersion, ReembeddedDay, version_date

log = logging.getLogger(__name__)


def _held(space_id: int):
    """(day, clip) of every row in the version's complete shards."""
    return (select(Shard.date, ShardRow.clip_id)
            .join(Shard, Shard.id == ShardRow.shard_id)
            .where(Shard.space_id == space_id, Shard.complete.is_(True)))


def _lost_clips(session: Session, old_id: int, active_id: int) -> int:
    """Clips with a vector in the old version and none (on that day) in the active one."""
    only_old = _held(old_id).except_(_held(active_id)).subquery()
    return int(session.scalar(select(func.count(only_old.c.clip_id.distinct()))) or 0)


def _folder_bytes(folder) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def _drop_rows(session: Session, space: str, dropped: dict[str, int], active_id: int) -> list[str]:
    """Delete the dropped versions' rows; returns the map files to delete after the commit."""
    ids = list(dropped.values())
    shard_ids = select(Shard.id).where(Shard.space_id.in_(ids))
    # Another version's record of a day it re-embedded may point at a dropped shard (the one
    # that made the day worth re-embedding): point it at the active version's shard of that
    # day, so that the record stays.
    for date, in session.execute(select(ReembeddedDay.date).distinct().where(
            ReembeddedDay.shard_id.in_(shard_ids), ReembeddedDay.space_id.not_in(ids))):
        replacement = session.scalar(select(Shard.id).where(
            Shard.space_id == active_id, Shard.date == date, Shard.complete.is_(True)))
        if replacement is not None:
            session.execute(update(ReembeddedDay).where(
                ReembeddedDay.shard_id.in_(shard_ids), ReembeddedDay.space_id.not_in(ids),
                ReembeddedDay.date == date).values(shard_id=replacement))
    # Explicit order rather than relying on cascades: every table is named.
    session.execute(delete(ReembeddedDay).where(
        ReembeddedDay.space_id.in_(ids) | ReembeddedDay.shard_id.in_(shard_ids)))
    session.execute(delete(ShardRow).where(ShardRow.shard_id.in_(shard_ids)))
    session.execute(delete(Shard).where(Shard.space_id.in_(ids)))
    session.execute(delete(EmbeddingSpace).where(EmbeddingSpace.id.in_(ids)))
    return delete_maps(session, space, list(dropped))


def drop_superseded(engine: Engine, paths: Paths, space: str) -> dict:
    """Remove the versions of ``space`` that its active version supersedes (see the module doc).

    The caller holds the root's night lock (a night, or ``sleep.py memory reembed``).

    Args:
        engine: the memory database.
        paths: the root's layout.
        space: the space's name, e.g. ``"vision"``.
    Returns:
        ``{"dropped": [versions, oldest first], "kept": {version: why it stays},
        "bytes_freed": bytes of shard, index and map files deleted}``.
    """
    out: dict = {"dropped": [], "kept": {}, "bytes_freed": 0}
    with Session(engine) as session, session.begin():
        found = session.execute(
            select(EmbeddingSpace.id, EmbeddingSpace.model_version)
            .join(ActiveVersion, ActiveVersion.space_id == EmbeddingSpace.id)
            .where(ActiveVersion.space == space)).first()
        active_date = version_date(found[1]) if found else None
        if active_date is None:  # no switch recorded, or not a nightly version: nothing is superseded
            return out
        active_id, active = found
        newest = session.scalar(
            select(func.max(Shard.space_id)).join(EmbeddingSpace, EmbeddingSpace.id == Shard.space_id)
            .where(EmbeddingSpace.name == space, Shard.complete.is_(True)))
        dropped: dict[str, int] = {}
        for space_id, version in session.execute(
                select(EmbeddingSpace.id, EmbeddingSpace.model_version)
                .where(EmbeddingSpace.name == space).order_by(EmbeddingSpace.id)):
            date = version_date(version)
            if space_id in (active_id, newest) or date is None or date >= active_date:
                continue
            lost = _lost_clips(session, space_id, active_id)
            if lost:
                out["kept"][version] = (f"{lost} clip(s) have a vector only in it: {active} could not "
                                        f"re-embed them (neither keepsake nor footage left)")
                log.info("kept %s of %s: %s", version, space, out["kept"][version])
                continue
            dropped[version] = space_id
        if not dropped:
            return out
        map_files = _drop_rows(session, space, dropped, active_id)
    # Files after the commit: a crash in between leaves files no row points at, never rows
    # pointing at missing files.
    freed = 0
    for version in dropped:
        freed += remove_version_files(paths, space, version)
        folder = index_folder(paths, space, version)
        freed += _folder_bytes(folder)
        shutil.rmtree(folder, ignore_errors=True)
    for rel in map_files:
        file = paths.root / rel
        if file.is_file():
            freed += file.stat().st_size
            file.unlink()
    out["dropped"], out["bytes_freed"] = sorted(dropped, key=dropped.get), freed
    log.info("dropped %s of %s (superseded by %s): %.1f MB freed", ", ".join(out["dropped"]), space, active,
             freed / 1e6)
    return out
