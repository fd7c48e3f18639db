"""The embedding store: vectors in ``.npy`` shards, their clips in SQLite.

Layout: ``memory/embeddings/{space}/{model_version}/{date}-{id}.npy``, float16, rows
L2-normalised so that cosine similarity is a dot product. A shard is written to a
temporary name, fsynced and renamed; only then does one transaction replace the
(space, version, date) key's shard row and add its rows, so the database never points at
a shard that is not complete, and a reader sees all of a day's rows or none. Every write
gets a new file name: readers holding the old file keep a consistent view until they
look again.

Model versions: a search reads one version per space. Moving earlier nights to a new
model version would slot in as a job that, for each shard of the old version, encodes
the day's frames (or audio) with the new model and calls :func:`write_embeddings` with the
new version and that date; once every date exists in the new version, searches of the
latest version cover the whole memory and the old version's shards can be forgotten.
"""
from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.orm import Session

from core.atomic import atomic_file
from core.paths import Paths, make_private_dir
from memory.catalog import EmbeddingSpace, Shard, ShardRow, space_of
from memory.search import Hit, search

log = logging.getLogger(__name__)

MODALITIES = ("vision", "audio")
# Space and version names become folder names.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


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


def _check_key(space: str, model_version: str, date: str) -> None:
    for what, value in (("space", space), ("model_version", model_version)):
        if not _SAFE_NAME.match(value or ""):
            raise ValueError(f"{what} {value!r}: use letters, digits and _.@+- only")
    if not _DATE.match(date or ""):
        raise ValueError(f"date {date!r}: expected YYYY-MM-DD")


def normalise(vectors: np.ndarray) -> np.ndarray:
    """L2-normalised float32 copy of ``(N, D)`` vectors; a zero or non-finite row is an error."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"vectors must be (N, D), got shape {v.shape}")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    bad = ~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} vector(s) are zero or not finite (first: row "
                         f"{int(np.argmax(bad))})")
    return v / norms


def shard_folder(paths: Paths, space: str, model_version: str) -> Path:
    return paths.embeddings / space / model_version


def private_folder(paths: Paths, folder: Path) -> Path:
    """Create ``folder`` under ``memory/`` with every level 0700 (``mkdir(parents=True)``
    would give the intermediate levels the umask's mode)."""
    make_private_dir(paths.memory)
    current = paths.memory
    for part in folder.relative_to(paths.memory).parts:
        current = current / part
        current.mkdir(mode=0o700, exist_ok=True)
    return folder


def _write_npy(final: Path, array: np.ndarray) -> None:
    """``np.save`` to a temporary name, fsync, rename: the file is whole or absent."""
    with atomic_file(final) as fh:
        np.save(fh, array, allow_pickle=False)


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
        vectors: ``(N, D)`` array; normalised here and stored as float16.
    Returns:
        the :class:`ShardInfo` written.
    Raises:
        ValueError: bad names, shapes, modalities, zero vectors, or a dimension that
            differs from earlier writes of the same space and version.
    """
    _check_key(space, model_version, date)
    unit = normalise(vectors)
    if len(rows) != len(unit):
        raise ValueError(f"{len(rows)} rows for {len(unit)} vectors")
    if len(unit) == 0:
        raise ValueError("no vectors to write")
    odd = sorted({r.modality for r in rows} - set(MODALITIES))
    if odd:
        raise ValueError(f"modality {odd[0]!r}: expected one of {MODALITIES}")
    dim = unit.shape[1]

    folder = private_folder(paths, shard_folder(paths, space, model_version))
    final = folder / f"{date}-{uuid.uuid4().hex[:12]}.npy"
    _write_npy(final, unit.astype(np.float16))
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
                          complete=True)
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
    log.info("stored %d %s vectors (%s) for %s", info.rows, space, model_version, date)
    return info


def latest_version(engine: Engine, space: str) -> str | None:
    """The newest model version of ``space`` that has at least one complete shard."""
    with Session(engine) as session:
        return session.scalars(
            select(EmbeddingSpace.model_version)
            .join(Shard, Shard.space_id == EmbeddingSpace.id)
            .where(EmbeddingSpace.name == space, Shard.complete.is_(True))
            .order_by(EmbeddingSpace.id.desc()).limit(1)).first()


def space_dim(engine: Engine, space: str, model_version: str) -> int | None:
    """The width of the vectors of one (space, model_version), or ``None`` if it holds none."""
    with Session(engine) as session:
        found = space_of(session, space, model_version)
        return None if found is None else found.dim


def spaces(engine: Engine) -> list[str]:
    """Names of the spaces that hold vectors, ``vision`` first."""
    with Session(engine) as session:
        names = set(session.scalars(
            select(EmbeddingSpace.name).join(Shard, Shard.space_id == EmbeddingSpace.id)
            .where(Shard.complete.is_(True))))
    order = {"vision": 0, "audio": 1, "shared": 2, "sae": 3, "openclip": 4}
    return sorted(names, key=lambda n: (order.get(n, 9), n))


def load_vectors(engine: Engine, paths: Paths, *, space: str, model_version: str,
                 date: str) -> tuple[list[EmbeddingRow], np.ndarray]:
    """The stored rows and vectors of one (space, model_version, date).

    Returns:
        ``(rows, vectors)``: one :class:`EmbeddingRow` per vector and a float32 ``(N, D)``
        array (unit length, as stored); empty when that key holds nothing.
    """
    from memory.search import open_shard

    with Session(engine) as session:
        shard = session.scalars(
            select(Shard).join(EmbeddingSpace, EmbeddingSpace.id == Shard.space_id)
            .where(EmbeddingSpace.name == space, EmbeddingSpace.model_version == model_version,
                   Shard.date == date, Shard.complete.is_(True))).first()
        if shard is None:
            return [], np.zeros((0, 0), np.float32)
        meta = session.execute(select(ShardRow.row, ShardRow.clip_id, ShardRow.modality, ShardRow.frame_id)
                               .where(ShardRow.shard_id == shard.id).order_by(ShardRow.row)).all()
        vectors = np.asarray(open_shard(paths, shard), dtype=np.float32)
    rows = [EmbeddingRow(clip_id, modality, frame_id) for _, clip_id, modality, frame_id in meta]
    return rows, vectors[[r for r, *_ in meta]]
