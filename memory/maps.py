"""Fitted maps between two versions of a space: a row per map, its arrays in an ``.npz``.

A map takes vectors of a newer version (``from_version``) into an older, complete one
(``to_version``), so that a query embedded by tonight's encoder reaches memories that have
not been re-embedded yet (``models.space_map`` fits it; this module only keeps it). Data
first, then the row that points at it, as everywhere in the store: the file is written
under a new name and renamed, then the row is replaced in one transaction. In a sealed memory
the ``.npz`` is sealed (written and read through the root's vault, :mod:`core.vault`).
"""
from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass

import numpy as np
from sqlalchemy import JSON, DateTime, Engine, Integer, String, Text, UniqueConstraint, delete, or_, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.paths import Paths
from memory.db import Base
from memory.shards import check_key, private_folder


class SpaceMapRow(Base):
    __tablename__ = "space_maps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    space: Mapped[str] = mapped_column(String(64))
    from_version: Mapped[str] = mapped_column(String(128))
    to_version: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(Text)  # relative to the root
    heldout: Mapped[dict] = mapped_column(JSON, default=dict)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=dt.datetime.now)

    __table_args__ = (UniqueConstraint("space", "from_version", "to_version"),)


@dataclass(frozen=True)
class StoredMap:
    """A map as stored: which versions it joins, its kind, arrays and held-out fit figures."""

    space: str
    from_version: str
    to_version: str
    kind: str
    arrays: dict[str, np.ndarray]
    heldout: dict


def save_map(engine: Engine, paths: Paths, *, space: str, from_version: str, to_version: str, kind: str,
             arrays: dict[str, np.ndarray], heldout: dict) -> str:
    """Store (or replace) the map from ``from_version`` to ``to_version`` of ``space``.

    Returns:
        the ``.npz`` path relative to the root.
    """
    check_key(space, from_version, "2000-01-01")
    check_key(space, to_version, "2000-01-01")
    folder = private_folder(paths, paths.memory / "maps" / space)
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S%f")
    final = folder / f"{from_version}__{to_version}.{stamp}.npz"
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()})
    with buffer.getbuffer() as data:  # a view: the arrays are not copied once more
        paths.vault.write_bytes(final, data)
    rel = str(final.relative_to(paths.root))
    old_file = None
    with Session(engine) as session, session.begin():
        row = session.scalars(select(SpaceMapRow).where(
            SpaceMapRow.space == space, SpaceMapRow.from_version == from_version,
            SpaceMapRow.to_version == to_version)).first()
        if row is None:
            session.add(SpaceMapRow(space=space, from_version=from_version, to_version=to_version, kind=kind,
                                    path=rel, heldout=heldout))
        else:
            old_file = row.path
            row.kind, row.path, row.heldout, row.created = kind, rel, heldout, dt.datetime.now()
    if old_file and old_file != rel:  # rows first, files second: a crash leaves an orphan, never a dangling row
        (paths.root / old_file).unlink(missing_ok=True)
    return rel


def load_map(engine: Engine, paths: Paths, space: str, from_version: str, to_version: str) -> StoredMap | None:
    """The stored map between two versions, or ``None`` when there is none (or its file is gone)."""
    with Session(engine) as session:
        row = session.scalars(select(SpaceMapRow).where(
            SpaceMapRow.space == space, SpaceMapRow.from_version == from_version,
            SpaceMapRow.to_version == to_version)).first()
        if row is None:
            return None
        kind, rel, heldout = row.kind, row.path, dict(row.heldout or {})
    try:
        # Through the vault: a sealed file is decrypted as the zip is read, a plain one read as it is.
        with paths.vault.open(paths.root / rel) as fh, np.load(fh, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        return None
    return StoredMap(space, from_version, to_version, kind, arrays, heldout)


def maps_from(engine: Engine, space: str, from_version: str) -> list[tuple[str, dict]]:
    """``(to_version, heldout figures)`` of every map stored from ``from_version`` of ``space``."""
    with Session(engine) as session:
        rows = session.scalars(select(SpaceMapRow).where(
            SpaceMapRow.space == space, SpaceMapRow.from_version == from_version)).all()
        return [(r.to_version, dict(r.heldout or {})) for r in rows]


def delete_maps(session: Session, space: str, versions: list[str]) -> list[str]:
    """Delete the rows of every map of ``space`` into or out of ``versions`` (inside the caller's
    transaction); the caller deletes the returned files, relative to the root, after the commit."""
    touches = or_(SpaceMapRow.from_version.in_(versions), SpaceMapRow.to_version.in_(versions))
    files = list(session.scalars(select(SpaceMapRow.path).where(SpaceMapRow.space == space, touches)))
    session.execute(delete(SpaceMapRow).where(SpaceMapRow.space == space, touches))
    return files
