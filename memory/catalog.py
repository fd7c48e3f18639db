"""Which embedding shards exist: spaces, shards and the clip behind every shard row.

An embedding space is a (name, model version, dimension): ``vision`` vectors of
``jepa@2026-01-15`` are not comparable with those of ``jepa@2026-02-01``, so a search
always stays inside one version. A shard is the ``.npy`` file of one (space, version,
date); each of its rows has a :class:`ShardRow` naming the clip (and frame) it came from.
The database only ever holds a shard once its file is complete (see ``memory.store``);
what the file holds is :mod:`memory.shards`' business.
"""
from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    Boolean,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from memory.db import Base


class EmbeddingSpace(Base):
    __tablename__ = "embedding_spaces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(32))  # vision | audio | shared
    model_version: Mapped[str] = mapped_column(String(128))  # e.g. jepa@2026-01-15
    dim: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=dt.datetime.now)

    __table_args__ = (UniqueConstraint("name", "model_version"),)


class Shard(Base):
    __tablename__ = "shards"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    space_id: Mapped[int] = mapped_column(ForeignKey("embedding_spaces.id", ondelete="CASCADE"))
    date: Mapped[str] = mapped_column(String(10), index=True)
    path: Mapped[str] = mapped_column(Text)  # relative to the root; unique per write
    rows: Mapped[int] = mapped_column(Integer)
    dim: Mapped[int] = mapped_column(Integer)
    # Set in the same transaction that adds the shard's rows, after its file was renamed
    # into place: searches and the doctor read only complete shards.
    complete: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=dt.datetime.now)
    # A digest of each MiB of the file (memory.integrity), taken as it was written;
    # NULL for a shard written before checksums (``doctor --repair`` records them).
    block_sums: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, default=None)
    # When ``doctor`` last read the whole file against its sums (each shard once; all of
    # them again with ``doctor --verify-data``).
    verified_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True, default=None)

    __table_args__ = (UniqueConstraint("space_id", "date"),)


class ShardRow(Base):
    __tablename__ = "shard_rows"

    shard_id: Mapped[int] = mapped_column(ForeignKey("shards.id", ondelete="CASCADE"),
                                          primary_key=True)
    row: Mapped[int] = mapped_column(Integer, primary_key=True)  # index in the .npy
    # A clip deleted (ingest redoing a day) takes its rows along; the doctor then compacts.
    clip_id: Mapped[int] = mapped_column(ForeignKey("clips.id", ondelete="CASCADE"))
    frame_id: Mapped[int | None] = mapped_column(ForeignKey("frames.id", ondelete="SET NULL"),
                                                 nullable=True)
    modality: Mapped[str] = mapped_column(String(16))  # vision | audio

    # frame_id: deleting a frame (retention, forget) sets its rows' frame_id to NULL, and
    # SQLite finds those rows by scanning the whole table unless it is indexed (a year:
    # 49M rows, seconds per frame).
    __table_args__ = (Index("ix_shard_rows_clip", "clip_id"), Index("ix_shard_rows_frame", "frame_id"))


def space_of(session: Session, name: str, model_version: str) -> EmbeddingSpace | None:
    return session.scalars(select(EmbeddingSpace).where(
        EmbeddingSpace.name == name, EmbeddingSpace.model_version == model_version)).first()


def complete_shards(session: Session, space_id: int, date_from: str | None = None,
                    date_to: str | None = None) -> list[Shard]:
    """The space's complete shards (optionally within a date range), oldest first."""
    query = select(Shard).where(Shard.space_id == space_id, Shard.complete.is_(True))
    if date_from:
        query = query.where(Shard.date >= date_from)
    if date_to:
        query = query.where(Shard.date <= date_to)
    return list(session.scalars(query.order_by(Shard.date)))


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
