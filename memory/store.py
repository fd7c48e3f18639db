"""The embedding store: vectors in shard files, their clips in SQLite.

A shard's file (its layout, dtype and checks: :mod:`memory.shards`) is written to a
temporary name, fsynced and renamed; only then does one transaction replace the
(space, version, date) key's shard row and add its rows, so the database never points at
a shard that is not complete, and a reader sees all of a day's rows or none. Every write
gets a new file name: readers holding the old file keep a consistent view until they
look again.

Model versions: a search reads one version per space (:mod:`memory.versions` says which:
the active one). The ``reembed`` stage moves earlier days into tonight's version by calling
:func:`write_embeddings` with that version and each day's date; once every day is there the
version becomes active (:func:`memory.versions.activate_if_complete`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.orm import Session

from core.paths import Paths
from memory import shards

# latest_version, space_dim, spaces, Hit and search are re-exported: callers outside the
# package have long imported them from here.
from memory.catalog import (  # noqa: F401
    EmbeddingSpace,
    Shard,
    ShardRow,
    latest_version,
    space_dim,
    space_of,
    spaces,
)
from memory.search import Hit, search  # noqa: F401

log = logging.getLogger(__name__)

MODALITIES = ("vision", "audio")


@dataclass(frozen=True)
class EmbeddingRow:
    """What one stored vector is of.

    Args:
        clip_id: the :class:`memory.schema.Clip` it describes.
        modality: ``"vision"`` or ``"audio"``: the sense the vector came from.
        frame_id: the frame, when the vector is of one frame rather than the whole clip.
    """

    clip_id: int
    modality: str
    frame_id: int | None = None


@dataclass(frozen=True)
class ShardInfo:
    """A shard as written: its database id, key, file (relative to the root) and shape."""

    shard_id: int
    space: str
    model_version: str
    date: str
    path: str
    rows: int
    dim: int


def write_embeddings(engine: Engine, paths: Paths, *, space: str, model_version: str, date: str,
                     rows: list[EmbeddingRow], vectors: np.ndarray) -> ShardInfo:
    """Store the vectors of one (space, model_version, date); replaces an earlier write.

    Args:
        engine: the memory database (:func:`memory.db.open_database`).
        paths: the root's layout.
        space: ``"vision"``, ``"audio"`` or ``"shared"``.
        model_version: ``"{model}@{date}"`` of the encoder, e.g. ``"jepa@2026-01-15"``.
        date: the night, ``YYYY-MM-DD``.
        rows: one :class:`EmbeddingRow` per vector, same order.
        vectors: ``(N, D)`` array; normalised here and stored in the shard format.
    Returns:
        the :class:`ShardInfo` written.
    Raises:
        ValueError: bad names, shapes, modalities, zero vectors, or a dimension that
            differs from earlier writes of the same space and version.
    """
    shards.check_key(space, model_version, date)
    unit = shards.normalise(vectors)
    if len(rows) != len(unit):
        raise ValueError(f"{len(rows)} rows for {len(unit)} vectors")
    if len(unit) == 0:
        raise ValueError("no vectors to write")
    odd = sorted({r.modality for r in rows} - set(MODALITIES))
    if odd:
        raise ValueError(f"modality {odd[0]!r}: expected one of {MODALITIES}")
    dim = unit.shape[1]

    final, sums = shards.write_shard(paths, space=space, model_version=model_version, date=date,
                                     unit=unit)
    rel = str(final.relative_to(paths.root))

    old_path: str | None = None
    try:
        with Session(engine) as session, session.begin():
            sp = space_of(session, space, model_version)
            if sp is None:
                sp = EmbeddingSpace(name=space, model_version=model_version, dim=dim)
                session.add(sp)
                session.flush()
            elif sp.dim != dim:
                raise ValueError(f"space {space} {model_version} holds {sp.dim}-d vectors, "
                                 f"got {dim}-d")
            old = session.scalars(select(Shard).where(Shard.space_id == sp.id,
                                                      Shard.date == date)).first()
            if old is not None:
                old_path = old.path
                # The database cascades to the old shard's rows.
                session.execute(delete(Shard).where(Shard.id == old.id))
            shard = Shard(space_id=sp.id, date=date, path=rel, rows=len(unit), dim=dim,
                          complete=True, block_sums=sums)
            session.add(shard)
            session.flush()
            session.execute(insert(ShardRow), [
                {"shard_id": shard.id, "row": i, "clip_id": r.clip_id, "frame_id": r.frame_id,
                 "modality": r.modality} for i, r in enumerate(rows)])
            info = ShardInfo(shard.id, space, model_version, date, rel, len(unit), dim)
    except BaseException:
        final.unlink(missing_ok=True)
        raise
    if old_path and old_path != rel:
        (paths.root / old_path).unlink(missing_ok=True)
    _remove_unnamed(engine, paths, final.parent, date)
    log.info("stored %d %s vectors (%s) for %s", info.rows, space, model_version, date)
    return info


def _remove_unnamed(engine: Engine, paths: Paths, folder, date: str) -> None:
    """Remove the day's shard files in ``folder`` that no row names: an earlier write of this
    key killed between its file and its commit (its rerun trains anew, so its file's name
    differs and nothing else would replace it). Only files whole, not temporaries."""
    found = {str(f.relative_to(paths.root)): f for f in folder.glob(f"{date}-*{shards.SUFFIX}")}
    if not found:
        return
    with Session(engine) as session:
        named = set(session.scalars(select(Shard.path).where(Shard.path.in_(list(found)))))
    for rel, file in found.items():
        if rel not in named:
            file.unlink(missing_ok=True)


def load_vectors(engine: Engine, paths: Paths, *, space: str, model_version: str,
                 date: str) -> tuple[list[EmbeddingRow], np.ndarray]:
    """The stored rows and vectors of one (space, model_version, date).

    Returns:
        ``(rows, vectors)``: one :class:`EmbeddingRow` per vector and a float32 ``(N, D)``
        array (unit length, as stored); empty when that key holds nothing.
    """
    attempt = 0
    while True:
        attempt += 1
        with Session(engine) as session:
            # The shard and its rows from one state of the database (a snapshot), never the
            # old file's rows paired with a replacing shard's (which gets the same id).
            session.connection().exec_driver_sql("BEGIN")
            shard = session.scalars(
                select(Shard).join(EmbeddingSpace, EmbeddingSpace.id == Shard.space_id)
                .where(EmbeddingSpace.name == space, EmbeddingSpace.model_version == model_version,
                       Shard.date == date, Shard.complete.is_(True))).first()
            if shard is None:
                return [], np.zeros((0, 0), np.float32)
            meta = session.execute(select(ShardRow.row, ShardRow.clip_id, ShardRow.modality, ShardRow.frame_id)
                                   .where(ShardRow.shard_id == shard.id).order_by(ShardRow.row)).all()
            try:
                vectors = shards.read_rows(paths, shard, [r for r, *_ in meta])
            except FileNotFoundError:
                if attempt == 3:
                    raise
                continue  # replaced after the snapshot began: read the new one
        rows = [EmbeddingRow(clip_id, modality, frame_id) for _, clip_id, modality, frame_id in meta]
        return rows, vectors
