"""Stage ``keep``: each clip keeps a keyframe and its sound, for re-embedding after retention.

Right after ingest, every clip of the night gets its middle frame as a small JPEG (short side
``memory.keep.keyframe_size``, never enlarged) and its audio segment as a 16 kHz mono FLAC
or WAV, stored in the memory by :mod:`memory.keepsakes`. Retention later removes the frames
and segments; these stay, so that tonight's encoders can embed earlier days again.

Safe to run twice: files are rewritten under the same names and rows replaced by clip id.
A clip whose footage is gone already (retention) keeps what it kept; a clip whose frame or
segment cannot be read is listed with the reason and keeps what it had, and the day goes on.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image
from tqdm import tqdm

from core.atomic import sweep_tmp
from core.paths import Paths
from core.progress import bar_off
from core.sealed import SealedFileError
from core.vault import open_file
from memory.keepsakes import (
    SNIPPET_RATE,
    Keepsake,
    day_clip_ids,
    day_keepsakes,
    keyframe_name,
    save_keepsakes,
    snippet_name,
    write_keep_file,
)
from memory.media import day_segments, middle_frames
from stages import Night

log = logging.getLogger(__name__)


class Unreadable(Exception):
    """A frame or audio segment that cannot be read; the message says why."""


def keyframe_jpeg(path: Path, short_side: int, quality: int) -> bytes:
    """The frame at ``path`` as RGB JPEG bytes, its short side at most ``short_side``.

    Raises:
        Unreadable: the file is missing or not a readable image.
    """
    try:
        with open_file(path) as fh, Image.open(fh) as image:  # a sealed memory's frame is sealed
            image.load()
            rgb = image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError, SealedFileError) as exc:
        raise Unreadable(f"cannot read the frame: {exc}") from None
    width, height = rgb.size
    short = min(width, height)
    if short > short_side:  # never enlarge: a small frame stays as it is
        scale = short_side / short
        size = ((short_side, max(1, round(height * scale))) if width == short
                else (max(1, round(width * scale)), short_side))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _read_mono(path: Path) -> np.ndarray:
    """The segment as mono samples at :data:`SNIPPET_RATE` (int16 when it already is, unchanged)."""
    with open_file(path) as fh, soundfile.SoundFile(fh) as sound:  # a sealed memory's segment is sealed
        if sound.channels == 1 and sound.samplerate == SNIPPET_RATE and sound.subtype == "PCM_16":
            # What ingest writes: copied sample for sample.
            return sound.read(dtype="int16")
        data, rate = sound.read(dtype="float32", always_2d=True), sound.samplerate
    wave = data.mean(axis=1)
    if rate != SNIPPET_RATE and len(wave):
        from models.audio.features import resample  # torch: only for a segment at another rate

        wave = resample(wave, rate, SNIPPET_RATE)
    return wave


def snippet_bytes(path: Path, snippet_format: str) -> bytes:
    """The audio segment at ``path`` as 16 kHz mono 16-bit FLAC or WAV bytes.

    Raises:
        Unreadable: the file is missing, unreadable or holds no samples.
    """
    try:
        wave = _read_mono(path)
    except (RuntimeError, OSError, soundfile.SoundFileError, SealedFileError) as exc:
        raise Unreadable(f"cannot read the audio: {exc}") from None
    if len(wave) == 0:
        raise Unreadable("the audio holds no samples")
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, SNIPPET_RATE, format=snippet_format.upper(), subtype="PCM_16")
    return buffer.getvalue()


def _stored_bytes(paths: Paths, keepsakes: list[Keepsake]) -> int:
    total = 0
    for k in keepsakes:
        for rel in (k.keyframe, k.snippet):
            if rel and (paths.root / rel).is_file():
                total += (paths.root / rel).stat().st_size
    return total


def run(night: Night) -> dict:
    """Keep each of the night's clips: its middle frame as a keyframe, its audio as a snippet.

    Returns:
        ``clips`` (the night's clips with footage or an earlier keepsake), ``kept``,
        ``keyframes``, ``snippets`` (clips that now have one), ``written`` (files written
        tonight), ``bytes_written``, ``bytes_stored`` and ``bytes_per_clip`` (the day's
        kept files), ``skipped`` (``{"clip_id", "file", "kind", "reason"}``), ``removed``
        (files no clip names any more), the settings, and ``metrics``.
    """
    cfg, paths, day = night.cfg.memory.keep, night.paths, night.day
    for leftover in sweep_tmp(paths.keep(day)):
        log.info("keep: removed %s left by an interrupted run", leftover)
    with night.Session() as session:
        clip_ids = day_clip_ids(session, day)
        frames = middle_frames(session, clip_ids)
        segments = {s.clip_id: s.path for s in day_segments(session, day)}
        earlier = {k.clip_id: k for k in day_keepsakes(session, day)}
    clip_ids = sorted(set(clip_ids) | set(earlier))

    keepsakes: list[Keepsake] = []
    skipped: list[dict] = []
    written = {"keyframes": 0, "snippets": 0}
    bytes_written = 0
    for clip_id in tqdm(clip_ids, desc="keep", unit="clip", leave=False, disable=bar_off(True, len(clip_ids) < 200)):
        before = earlier.get(clip_id)
        keyframe = before.keyframe if before else None
        snippet = before.snippet if before else None
        if clip_id in frames:
            try:
                data = keyframe_jpeg(paths.root / frames[clip_id], cfg.keyframe_size, cfg.jpeg_quality)
                keyframe = write_keep_file(paths, day, keyframe_name(clip_id), data)
                written["keyframes"] += 1
                bytes_written += len(data)
            except Unreadable as exc:
                skipped.append({"clip_id": clip_id, "file": frames[clip_id], "kind": "keyframe",
                                "reason": str(exc)})
        if clip_id in segments:
            try:
                data = snippet_bytes(paths.root / segments[clip_id], cfg.snippet_format)
                snippet = write_keep_file(paths, day, snippet_name(clip_id, cfg.snippet_format), data)
                written["snippets"] += 1
                bytes_written += len(data)
            except Unreadable as exc:
                skipped.append({"clip_id": clip_id, "file": segments[clip_id], "kind": "snippet",
                                "reason": str(exc)})
        if keyframe or snippet:
            keepsakes.append(Keepsake(clip_id, day, keyframe, snippet))
    for item in skipped:
        log.warning("keep: clip %d's %s %s left out: %s", item["clip_id"], item["kind"], item["file"],
                    item["reason"])
    removed = save_keepsakes(night.engine, paths, day, keepsakes)

    stored = _stored_bytes(paths, keepsakes)
    figures = {
        "kept": len(keepsakes),
        "keyframes": sum(1 for k in keepsakes if k.keyframe),
        "snippets": sum(1 for k in keepsakes if k.snippet),
        "bytes_written": bytes_written,
        "bytes_stored": stored,
        "bytes_per_clip": round(stored / len(keepsakes), 1) if keepsakes else 0.0,
        "skipped": len(skipped),
    }
    log.info("keep %s: %d clips kept (%d keyframes, %d snippets), %.1f kB per clip, %d skipped",
             day, figures["kept"], figures["keyframes"], figures["snippets"],
             figures["bytes_per_clip"] / 1000, len(skipped))
    return {"clips": len(clip_ids), **{k: v for k, v in figures.items() if k != "skipped"},
            "written": written, "skipped": skipped, "removed": removed,
            "keyframe_size": cfg.keyframe_size, "jpeg_quality": cfg.jpeg_quality,
            "snippet_format": cfg.snippet_format, "metrics": figures}
