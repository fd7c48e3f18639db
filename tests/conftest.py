"""Shared fixtures: tiny real media made by FFmpeg's lavfi sources, a fresh root, the CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.config import CONFIG_DIR, load_config
from ingest.binaries import ffmpeg_path


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def make_media(path: Path, *, seconds: float = 4.0,
               video: str | None = "testsrc2=size=160x120:rate=10",
               audio: str | None = "sine=frequency=440:sample_rate=44100",
               extra: list[str] | None = None) -> Path:
    """Write a small real media file from FFmpeg's lavfi sources.

    Args:
        video: a full lavfi video source (``smptebars=size=160x120:rate=10``...) or None.
        audio: a full lavfi audio source (``anoisesrc=color=pink:sample_rate=16000``...) or None.
        extra: more output options (codecs, ``-metadata:s:v rotate=90``...).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [ffmpeg_path(), "-v", "error", "-y"]
    for source in (video, audio):
        if source:
            cmd += ["-f", "lavfi", "-i", source]
    cmd += ["-t", str(seconds)]
    if video:
        cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    if audio and path.suffix.lower() in (".mp4", ".mov", ".m4a", ".mkv"):
        cmd += ["-c:a", "aac"]
    cmd += list(extra or []) + [str(path)]
    subprocess.run(cmd, check=True, capture_output=True)
    return path


@pytest.fixture
def root(tmp_path) -> Path:
    """A fresh root with the layout's top folder."""
    r = tmp_path / "root"
    r.mkdir()
    return r


@pytest.fixture
def tiny_cfg():
    return load_config(CONFIG_DIR / "tiny.yaml")


def run_cli(*args: str, cwd: Path = REPO, timeout: float = 600, env: dict | None = None):
    """Run ``python sleep.py ARGS`` in a subprocess; return the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "sleep.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=full_env)
