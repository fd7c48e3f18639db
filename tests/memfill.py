"""Synthetic memories for the memory tests: real rows and files, vectors with known neighbours."""
from __future__ import annotations

import datetime as dt

import numpy as np
from sqlalchemy.orm import Session

from core.paths import Paths
from memory.schema import AudioSegment, Clip, Frame, Source
from memory.store import EmbeddingRow, write_embeddings

DIM = 32


def add_day(engine, paths: Paths, date: str, n_clips: int, *, seed: int = 0,
            source_name: str = "cam.mp4", with_audio: bool = True) -> list[int]:
    """Insert one source with ``n_clips`` clips (each with 3 frames and an audio segment) and
    write their files; return the clip ids in order."""
    day = dt.date.fromisoformat(date)
    raw = paths.raw(day) / source_name
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_bytes(b"not really a video")
    ids = []
    with Session(engine) as session, session.begin():
        source = Source(date=date, path=str(raw.relative_to(paths.root)), content_hash=f"{date}{seed}",
                        size_bytes=18, status="ok", has_video=True, has_audio=with_audio,
                        wall_start=dt.datetime.fromisoformat(f"{date}T08:00:00"))
        session.add(source)
        session.flush()
        for i in range(n_clips):
            clip = Clip(source_id=source.id, date=date, index=i, start_s=3.0 * i, end_s=3.0 * i + 3,
                        wall_start=source.wall_start + dt.timedelta(seconds=3 * i))
            session.add(clip)
            session.flush()
            for j in range(3):
                frame = paths.frames(day) / f"{source_name}-{i:05d}-{j}.jpg"
                frame.parent.mkdir(parents=True, exist_ok=True)
                frame.write_bytes(b"jpeg")
                session.add(Frame(clip_id=clip.id, t_s=3.0 * i + j,
                                  path=str(frame.relative_to(paths.root))))
            if with_audio:
                wav = paths.audio_segments(day) / f"{source_name}-{i:05d}.wav"
                wav.parent.mkdir(parents=True, exist_ok=True)
                wav.write_bytes(b"wav")
                session.add(AudioSegment(clip_id=clip.id, path=str(wav.relative_to(paths.root)),
                                         seconds=3.0, sample_rate=16000))
            ids.append(clip.id)
    return ids


def day_vectors(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    """Vectors around a few per-day centres, so neighbours are meaningful."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, dim))
    return (centres[rng.integers(0, 4, n)] + 0.3 * rng.standard_normal((n, dim))).astype(np.float32)


def embed_day(engine, paths: Paths, date: str, clip_ids: list[int], *, seed: int = 0,
              space: str = "vision", version: str = "jepa@2026-01-01", dim: int = DIM,
              modality: str = "vision") -> np.ndarray:
    vectors = day_vectors(len(clip_ids), seed, dim)
    write_embeddings(engine, paths, space=space, model_version=version, date=date,
                     rows=[EmbeddingRow(c, modality) for c in clip_ids], vectors=vectors)
    return vectors


def fill(engine, paths: Paths, dates: list[str], n_clips: int = 40) -> dict[str, tuple[list[int], np.ndarray]]:
    """Several days, each with clips, files and vision vectors."""
    out = {}
    for k, date in enumerate(dates):
        ids = add_day(engine, paths, date, n_clips, seed=k)
        out[date] = (ids, embed_day(engine, paths, date, ids, seed=k))
    return out
