"""Distinct audio-visual scenes made by FFmpeg's lavfi sources, decoded straight to arrays.

Each scene pairs one picture source with one sound (sine tones, noise colours, pulses,
a chirp), so a scene's clips look alike and sound alike and differ from other scenes.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass

import numpy as np

from ingest.binaries import ffmpeg_path

RATE = 16000
FRAME_SIZE = (16, 12)  # width, height of the decoded frames

SCENES = [
    ("testsrc=size=64x48:rate=4", "sine=frequency=300:sample_rate=16000"),
    ("smptebars=size=64x48:rate=4", "sine=frequency=1500:sample_rate=16000"),
    ("rgbtestsrc=size=64x48:rate=4", "sine=frequency=4000:sample_rate=16000"),
    ("color=c=red:size=64x48:rate=4", "anoisesrc=color=white:sample_rate=16000:amplitude=0.3:seed=1"),
    ("color=c=blue:size=64x48:rate=4", "anoisesrc=color=pink:sample_rate=16000:amplitude=0.5:seed=2"),
    ("mandelbrot=size=64x48:rate=4", "anoisesrc=color=brown:sample_rate=16000:amplitude=0.8:seed=3"),
    ("color=c=yellow:size=64x48:rate=4", "aevalsrc='0.5*sin(2*PI*800*t)*lt(mod(t\\,0.4)\\,0.1)':s=16000"),
    ("testsrc2=size=64x48:rate=4", "aevalsrc='0.4*sin(2*PI*(200+1800*mod(t\\,1))*t)':s=16000"),
]


@dataclass
class Scene:
    index: int
    wave: np.ndarray     # (samples,) float32, 16 kHz mono
    frames: np.ndarray   # (seconds, H, W, 3) uint8, one frame a second


def _run(cmd: list[str]) -> bytes:
    return subprocess.run(cmd, check=True, capture_output=True).stdout


def make_scene(index: int, seconds: float) -> Scene:
    video, audio = SCENES[index]
    ffmpeg = str(ffmpeg_path())
    wave = np.frombuffer(_run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", audio, "-t", str(seconds),
                               "-ac", "1", "-ar", str(RATE), "-f", "f32le", "pipe:"]), "<f4").astype(np.float32)
    w, h = FRAME_SIZE
    raw = _run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", video, "-t", str(seconds),
                "-vf", f"fps=1,scale={w}:{h}", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"])
    frames = np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)
    return Scene(index, wave, frames)


def clips_of(scene: Scene, clip_seconds: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cut a scene into (wave, frames) clips of ``clip_seconds``."""
    n = len(scene.wave) // (RATE * clip_seconds)
    return [(scene.wave[i * RATE * clip_seconds:(i + 1) * RATE * clip_seconds],
             scene.frames[i * clip_seconds:(i + 1) * clip_seconds]) for i in range(n)]


def pixel_features(frames: np.ndarray) -> np.ndarray:
    """A clip's "vision embedding" for tests: the mean of its frames' downsampled pixels."""
    return frames.reshape(len(frames), -1).astype(np.float32).mean(axis=0) / 255.0
