"""The counting rule: how a source's duration becomes clip windows, frames and audio segments.

One rule, exact so that tests can assert counts (``D`` the source's duration, ``T`` =
``ingest.clip_seconds``, ``F`` = ``ingest.frame_fps``):

* Clips are the windows ``[k*T, (k+1)*T)`` from the start of the source. A trailing
  partial window is kept when it is at least :data:`MIN_TAIL_SECONDS` long; shorter tails
  are dropped because they are container padding (an AAC priming frame, the last video
  frame's duration) rather than footage. A source shorter than one clip always gives one
  clip. So with ``T = 3``: 10 s -> 4 clips (the last one 1 s), 9.1 s -> 3 clips,
  4.4 s -> 2 clips, 0.5 s -> 1 clip.
* Frames are taken at ``t = n/F`` for every ``n`` with ``t`` inside a kept clip and inside
  the video; a frame belongs to the clip whose window contains ``t``. At 1 fps a 4.4 s
  video gives 5 frames: 3 in clip 0 (t = 0, 1, 2) and 2 in clip 1 (t = 3, 4).
* Audio is cut at the same window boundaries: one WAV segment per kept clip that the audio
  reaches, its length the audio inside the window.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# Tails shorter than this are padding, not footage (see the module docstring).
MIN_TAIL_SECONDS = 0.25
# Timestamps from FFmpeg are rounded to microseconds; compare with some slack.
EPS = 1e-3


@dataclass(frozen=True)
class Window:
    """One clip's window within its source, in seconds from the source's start."""

    index: int
    start_s: float
    end_s: float


def clip_windows(duration_s: float, clip_seconds: float) -> list[Window]:
    """The clip windows of a source of ``duration_s`` seconds (see the module rule).

    Args:
        duration_s: decoded length of the source; ``<= 0`` gives no clips.
        clip_seconds: ``T``, the length of a full clip.
    Returns:
        the windows in order; the last one may be shorter than ``clip_seconds``.
    """
    if duration_s <= EPS:
        return []
    full = int(math.floor(duration_s / clip_seconds + EPS))
    tail = duration_s - full * clip_seconds
    count = full + (1 if tail >= MIN_TAIL_SECONDS - EPS or full == 0 else 0)
    return [Window(k, k * clip_seconds, min((k + 1) * clip_seconds, duration_s)) for k in range(count)]


def clip_of(t_s: float, clip_seconds: float) -> int:
    """Index of the clip window containing time ``t_s`` (a frame or segment start)."""
    return int(math.floor(t_s / clip_seconds + EPS))


def frame_time(n: int, frame_fps: float) -> float:
    """Time of the ``n``-th frame FFmpeg's ``fps`` filter writes (``start_time=0``)."""
    return n / frame_fps
