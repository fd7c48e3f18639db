"""The one FFmpeg command that splits a source: pure functions, testable as data.

A single decode pass feeds every output (FFmpeg takes several outputs per input):

* frames: ``fps`` (``round=up`` so frame ``n`` is the picture at ``t = n/F``) then
  ``scale`` to the short side, JPEG via the ``image2`` muxer. Scaling happens on the 1 fps
  frames inside the decode pass, so a 4K source never has a full-size picture written.
* audio: resampled to the target rate and mono, re-timed to start at 0 (``async=1``
  keeps it aligned with the video when the recorder dropped samples), chunked into
  packets that divide a clip exactly, so the ``segment`` muxer cuts WAVs exactly at the
  clip boundaries.
* clip files (optional): the same ``segment`` muxer with stream copy; copied video can
  only be cut at key frames, so a clip file may start up to one GOP before its clip.
FFmpeg's autorotate (on by default) applies phone rotation metadata before the filters.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ffmpeg

from core.config import IngestConfig
from ingest.probe import MediaInfo

# Codecs that MP4 takes as stream copy (and that browsers play); anything else goes to MKV.
MP4_VIDEO = {"h264", "hevc", "av1", "mpeg4", "vp9"}
MP4_AUDIO = {"aac", "mp3", "alac", "opus", "ac3", "eac3", "flac"}

FRAME_PATTERN = "%06d.jpg"
AUDIO_PATTERN = "%05d.wav"
SEGMENT_LIST = "segments.csv"


@dataclass(frozen=True)
class OutputDirs:
    """Folders (temporary while FFmpeg runs) for one source's outputs; None = not wanted."""

    frames: Path | None
    audio: Path | None
    clips: Path | None


def _pattern(folder: Path, name: str) -> str:
    # `%` in a folder name would be read as part of the muxer's number pattern.
    return "file:" + str(folder).replace("%", "%%") + "/" + name


def _plain(folder: Path, name: str) -> str:
    return "file:" + str(folder / name)


def audio_packet_samples(clip_seconds: float, sample_rate: int) -> int:
    """Samples per audio packet: the largest divisor of a clip's length up to 4096.

    The segment muxer cuts only between packets, so packets that tile a clip exactly
    give segments of exactly ``clip_seconds``. A clip length with no usable divisor (a
    prime number of samples) falls back to 1024 and cuts within one packet (64 ms).
    """
    clip_samples = round(clip_seconds * sample_rate)
    for n in range(min(4096, clip_samples), 0, -1):
        if clip_samples % n == 0:
            return n if n >= 256 else 1024
    return 1024


def scale_expressions(short_side: int) -> tuple[str, str]:
    """``scale`` width/height expressions that make the shorter side ``short_side``."""
    return (f"if(lt(iw,ih),{short_side},-2)", f"if(lt(iw,ih),-2,{short_side})")


def clip_container(info: MediaInfo) -> str:
    """``mp4`` when every copied codec fits in MP4, else ``mkv`` (takes any codec)."""
    video_ok = info.video_codec in MP4_VIDEO
    audio_ok = info.audio_codec is None or info.audio_codec in MP4_AUDIO
    return "mp4" if video_ok and audio_ok else "mkv"


def build_command(source: Path, info: MediaInfo, cfg: IngestConfig, out: OutputDirs,
                  ffmpeg_bin: str = "ffmpeg") -> list[str]:
    """The argument list of the single FFmpeg run that splits ``source``.

    Args:
        source: the raw file (absolute path).
        info: its probe result (which streams to map).
        cfg: the ingest config (clip length, frame rate and size, audio rate...).
        out: where each output goes; a ``None`` folder leaves that output out.
        ffmpeg_bin: the ffmpeg executable.
    Returns:
        the command as a list of strings for :func:`subprocess.run`.
    Raises:
        ValueError: no output is wanted (nothing to do).
    """
    inp = ffmpeg.input("file:" + str(source))
    outputs = []
    if out.frames is not None and info.has_video:
        width, height = scale_expressions(cfg.frame_short_side)
        frames = (inp[str(info.video_index)]
                  .filter("fps", fps=cfg.frame_fps, start_time=0, round="up")
                  .filter("scale", width, height))
        outputs.append(frames.output(_pattern(out.frames, FRAME_PATTERN), f="image2",
                                     start_number=0, **{"q:v": cfg.jpeg_quality}))
    if out.audio is not None and info.has_audio:
        rate = cfg.audio_sample_rate
        audio = (inp[str(info.audio_index)]
                 .filter("aresample", rate, **{"async": 1, "first_pts": 0})
                 .filter("aformat", sample_fmts="s16", channel_layouts="mono", sample_rates=rate)
                 .filter("asetnsamples", n=audio_packet_samples(cfg.clip_seconds, rate), p=0))
        outputs.append(audio.output(_pattern(out.audio, AUDIO_PATTERN), acodec="pcm_s16le",
                                    f="segment", segment_time=cfg.clip_seconds,
                                    segment_format="wav", segment_start_number=0,
                                    segment_list=_plain(out.audio, SEGMENT_LIST),
                                    segment_list_type="csv"))
    if out.clips is not None and info.has_video:
        streams = [inp[str(info.video_index)]]
        if info.has_audio:
            streams.append(inp[str(info.audio_index)])
        container = clip_container(info)
        outputs.append(ffmpeg.output(*streams, _pattern(out.clips, f"%05d.{container}"), c="copy",
                                     f="segment", segment_time=cfg.clip_seconds,
                                     segment_format="mp4" if container == "mp4" else "matroska",
                                     segment_start_number=0, reset_timestamps=1,
                                     segment_list=_plain(out.clips, SEGMENT_LIST),
                                     segment_list_type="csv"))
    if not outputs:
        raise ValueError(f"{source}: no output wanted")
    spec = ffmpeg.merge_outputs(*outputs).global_args("-nostdin", "-hide_banner", "-v", "error")
    return spec.compile(cmd=ffmpeg_bin, overwrite_output=True)


def describe_ffmpeg_failure(stderr: str) -> str:
    """FFmpeg's complaint when it could not split a file, in words a person understands."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else "no error message"
    if "] " in last and last.startswith("["):
        last = last.split("] ", 1)[1]
    if "Decoder" in stderr and "not found" in stderr or "Unsupported codec" in stderr:
        return f"cannot decode: FFmpeg has no decoder for this stream ({last})"
    if "Invalid data found" in stderr or "error reading header" in stderr:
        return f"truncated or damaged: {last}"
    return f"cannot decode: {last}"
