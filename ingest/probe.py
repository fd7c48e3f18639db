"""What a file holds (ffprobe), and why a bad file is bad, in words a person understands."""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import ffmpeg

from ingest.binaries import ffprobe_path

log = logging.getLogger(__name__)

# Demuxers that read single pictures: a photo named .mp4 is not a recording.
STILL_IMAGE_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "gif",
                       "tiff_pipe", "heif")


class MediaError(Exception):
    """A file that cannot be ingested; ``str()`` is the reason shown to the person."""


@dataclass(frozen=True)
class MediaInfo:
    """The streams ingest uses, from ffprobe.

    ``video_index``/``audio_index`` are absolute stream indexes (``-map 0:N``); cover art in
    music files is not video. ``width``/``height`` are as displayed, after rotation.
    """

    format_name: str
    duration_s: float | None
    video_index: int | None
    audio_index: int | None
    video_codec: str | None
    audio_codec: str | None
    width: int | None
    height: int | None
    rotation: int
    creation_time: str | None

    @property
    def has_video(self) -> bool:
        return self.video_index is not None

    @property
    def has_audio(self) -> bool:
        return self.audio_index is not None

    def as_dict(self) -> dict:
        return asdict(self)


def _last_error_line(stderr: bytes | str) -> str:
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "no error message"
    line = lines[-1]
    # ffprobe prefixes the message with the file name: keep the reason only.
    if ": " in line and not line.startswith("["):
        line = line.rsplit(": ", 1)[-1]
    elif line.startswith("[") and "] " in line:
        line = line.split("] ", 1)[1]
    return line


def _looks_like_mp4(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(12)
    return head[4:8] in (b"ftyp", b"mdat", b"moov", b"wide", b"free")


def describe_probe_failure(path: Path, stderr: bytes | str) -> str:
    """Turn ffprobe's complaint about ``path`` into a reason a person understands.

    Args:
        path: the file ffprobe refused.
        stderr: what ffprobe wrote.
    Returns:
        e.g. ``"not a media file (ffprobe: Invalid data found when processing input)"``.
    """
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    last = _last_error_line(text)
    if "moov atom not found" in text and _looks_like_mp4(path):
        # An MP4/MOV writes its index at the end: a recording cut off before it was closed.
        return ("truncated or damaged: the index (moov atom) is missing, "
                "the recording was probably cut off before it was finished")
    if "Invalid data found when processing input" in text:
        return f"not a media file (ffprobe: {last})"
    if "Permission denied" in text:
        return f"cannot be read (ffprobe: {last})"
    return f"cannot be read as media (ffprobe: {last})"


def _rotation(stream: dict) -> int:
    for side in stream.get("side_data_list") or []:
        if "rotation" in side:
            return int(round(float(side["rotation"]))) % 360
    tag = (stream.get("tags") or {}).get("rotate")
    return int(tag) % 360 if tag and tag.lstrip("-").isdigit() else 0


def _float(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if out > 0 else None


def parse_probe(data: dict) -> MediaInfo:
    """Pick the first real video and audio stream out of ffprobe's JSON.

    Raises:
        MediaError: no audio or video stream, or a still picture.
    """
    fmt = data.get("format") or {}
    format_name = fmt.get("format_name", "")
    video = audio = None
    for stream in data.get("streams") or []:
        kind = stream.get("codec_type")
        if kind == "video" and video is None and not (stream.get("disposition") or {}).get("attached_pic"):
            video = stream
        elif kind == "audio" and audio is None and int(stream.get("channels") or 0) > 0:
            audio = stream
    if format_name in STILL_IMAGE_FORMATS or format_name.endswith("_pipe"):
        raise MediaError(f"a still picture ({format_name}), not a recording")
    if video is None and audio is None:
        raise MediaError("no audio or video stream")
    rotation = _rotation(video) if video else 0
    width, height = (video.get("width"), video.get("height")) if video else (None, None)
    if rotation in (90, 270) and width and height:
        width, height = height, width
    durations = [_float(s.get("duration")) for s in (video, audio) if s]
    durations = [d for d in durations if d]
    duration = max(durations) if durations else _float(fmt.get("duration"))
    tags = {k.lower(): v for k, v in (fmt.get("tags") or {}).items()}
    if not tags.get("creation_time"):
        for stream in (video, audio):
            if stream and (stream.get("tags") or {}).get("creation_time"):
                tags["creation_time"] = stream["tags"]["creation_time"]
                break
    return MediaInfo(
        format_name=format_name,
        duration_s=duration,
        video_index=int(video["index"]) if video else None,
        audio_index=int(audio["index"]) if audio else None,
        video_codec=video.get("codec_name") if video else None,
        audio_codec=audio.get("codec_name") if audio else None,
        width=int(width) if width else None,
        height=int(height) if height else None,
        rotation=rotation,
        creation_time=tags.get("creation_time") or None,
    )


def probe_file(path: Path) -> MediaInfo:
    """Probe ``path`` with ffprobe.

    Args:
        path: the raw file.
    Returns:
        its :class:`MediaInfo`.
    Raises:
        MediaError: with the reason in words (empty file, not media, truncated...).
    """
    size = path.stat().st_size
    if size == 0:
        raise MediaError("empty file (0 bytes)")
    try:
        # `file:` keeps names with a colon from being read as a protocol.
        data = ffmpeg.probe(f"file:{path}", cmd=ffprobe_path(), v="error")
    except ffmpeg.Error as exc:
        raise MediaError(describe_probe_failure(path, exc.stderr or b"")) from None
    return parse_probe(data)


def parse_creation_time(value: str | None) -> dt.datetime | None:
    """``creation_time`` tag (ISO 8601, usually UTC) -> naive local time, or None."""
    if not value:
        return None
    try:
        stamp = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.year < 1971:  # cameras without a clock write 1904/1970 epochs
        return None
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone().replace(tzinfo=None)
    return stamp
