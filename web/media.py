"""Which files the page may serve, and how it shows one clip: a thumbnail and a player.

Only media under ``data/`` (recordings, clips, frames, sound segments) and ``memory/keep/``
(the keyframes and sounds kept for good) are served; never the database, the shards, the
checkpoints, the reports or a journal.
"""
from __future__ import annotations

import mimetypes
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from memory.media import ClipMedia

SERVED = (("data",), ("memory", "keep"))  # folders under the root whose media the page may read
MEDIA_TYPES = ("image/", "video/", "audio/")
# Types some systems' mimetypes tables lack.
EXTRA_TYPES = {".mkv": "video/x-matroska", ".flac": "audio/flac", ".m4a": "audio/mp4", ".opus": "audio/ogg",
               ".webm": "video/webm", ".wav": "audio/wav"}


def media_type(path: str | PurePosixPath) -> str | None:
    """The content type of a media file by its name, or ``None`` for anything else."""
    suffix = PurePosixPath(path).suffix.lower()
    kind = EXTRA_TYPES.get(suffix) or mimetypes.guess_type(f"x{suffix}")[0]
    return kind if kind and kind.startswith(MEDIA_TYPES) else None


def served_file(root: Path, relative: str) -> Path | None:
    """The file ``relative`` names under ``root`` if the page may serve it, else ``None``.

    Refused: absolute paths, ``..``, anything outside :data:`SERVED` (also through a symbolic
    link), and files that are not images, video or sound.
    """
    rel = PurePosixPath(relative)
    if not relative or "\x00" in relative or "\\" in relative or rel.is_absolute() or ".." in rel.parts:
        return None
    if media_type(rel) is None:
        return None
    base = next((root.joinpath(*folder) for folder in SERVED if rel.parts[:len(folder)] == folder), None)
    if base is None:
        return None
    path = root.joinpath(*rel.parts).resolve()
    if not path.is_relative_to(base.resolve()) or not path.is_file():
        return None
    return path


def media_url(relative: str) -> str:
    return "/media/" + quote(relative)


def _present(root: Path, relative: str | None) -> bool:
    return bool(relative) and served_file(root, relative) is not None


def thumbnail(root: Path, frame_path: str | None, media: ClipMedia | None) -> str | None:
    """URL of the clip's picture: its frame while retention keeps it, else its kept keyframe."""
    for candidate in (frame_path, media.keyframe if media else None):
        if _present(root, candidate):
            return media_url(candidate)
    return None


def player(root: Path, media: ClipMedia | None) -> dict | None:
    """How to play the clip: ``{"kind": "video"|"audio", "url"}``, or ``None`` when only a
    picture is left.

    In order: the clip's own file; its moment of the recording (a media fragment
    ``#t=start,end``) while the recording is kept; its sound segment; its kept sound.
    """
    if media is None:
        return None
    if _present(root, media.video_path):
        return {"kind": "video", "url": media_url(media.video_path)}
    if _present(root, media.source_path):
        kind = "video" if media.has_video else "audio"
        return {"kind": kind, "url": f"{media_url(media.source_path)}#t={media.start_s:.2f},{media.end_s:.2f}"}
    for sound in (media.segment_path, media.snippet):
        if _present(root, sound):
            return {"kind": "audio", "url": media_url(sound)}
    return None


def clip_view(root: Path, fields: dict, media: ClipMedia | None) -> dict:
    """``fields`` (a hit or a nearby clip as a dict) with its ``thumbnail`` and ``player``."""
    return {**fields, "thumbnail": thumbnail(root, fields.get("frame_path"), media), "player": player(root, media)}
