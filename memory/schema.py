"""What a day of recordings becomes in the database: sources, clips, frames, audio segments.

A source is one raw file keyed by its content hash; a clip is a ``clip_seconds`` window of
it; frames and audio segments belong to a clip. Paths are stored relative to the root so a
memory can be moved.
"""
from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from memory.db import Base


class Source(Base):
    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    date: Mapped[str] = mapped_column(String(10), index=True)  # YYYY-MM-DD of the night
    path: Mapped[str] = mapped_column(Text)  # relative to the root
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(Integer)
    # "ok": clips written; "failed": see reason; "removed": the file left data/raw.
    status: Mapped[str] = mapped_column(String(16), default="ok")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    has_video: Mapped[bool] = mapped_column(Boolean, default=False)
    has_audio: Mapped[bool] = mapped_column(Boolean, default=False)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    wall_start: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    # Where wall_start came from: "creation_time", "filename" or "mtime".
    wall_start_from: Mapped[str | None] = mapped_column(String(16), nullable=True)
    probe: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    ingested_at: Mapped[dt.datetime] = mapped_column(DateTime, default=dt.datetime.now)

    clips: Mapped[list["Clip"]] = relationship(back_populates="source", cascade="all, delete-orphan")

    __table_args__ = (Index("ix_sources_date_path", "date", "path"),)


class Clip(Base):
    __tablename__ = "clips"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"), index=True)
    date: Mapped[str] = mapped_column(String(10), index=True)
    index: Mapped[int] = mapped_column(Integer)  # position within the source
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    wall_start: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True, index=True)
    video_path: Mapped[str | None] = mapped_column(Text, nullable=True)  # optional clip file

    source: Mapped[Source] = relationship(back_populates="clips")
    frames: Mapped[list["Frame"]] = relationship(back_populates="clip", cascade="all, delete-orphan")
    audio: Mapped["AudioSegment | None"] = relationship(
        back_populates="clip", cascade="all, delete-orphan", uselist=False
    )


class Frame(Base):
    __tablename__ = "frames"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    clip_id: Mapped[int] = mapped_column(ForeignKey("clips.id", ondelete="CASCADE"), index=True)
    t_s: Mapped[float] = mapped_column(Float)  # seconds from the start of the source
    path: Mapped[str] = mapped_column(Text)  # relative to the root

    clip: Mapped[Clip] = relationship(back_populates="frames")


class AudioSegment(Base):
    __tablename__ = "audio_segments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    clip_id: Mapped[int] = mapped_column(ForeignKey("clips.id", ondelete="CASCADE"), unique=True)
    path: Mapped[str] = mapped_column(Text)  # relative to the root
    seconds: Mapped[float] = mapped_column(Float)
    sample_rate: Mapped[int] = mapped_column(Integer)

    clip: Mapped[Clip] = relationship(back_populates="audio")
