"""Frames of distinct scenes made by FFmpeg's lavfi sources, and DB rows for them.

Used by the vision tests before (and independently of) the ingest stage: each scene is
one source with one clip, whose frames are JPEGs like those ingest writes.
"""
from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path
from typing import Callable

from ingest.binaries import ffmpeg_path

# Grey scenes with brightness and contrast drifting over time: their colours say little,
# so a random encoder (close to a colour histogram) is not already perfect at telling
# them apart and retrieval has room to show what training added.
# life, cellauto, gradients and sierpinski are random: seeded, and gradients' colours and
# end points (drawn from an unseeded source when left out) are given, so every run sees
# bit-identical footage.
GRADIENTS = "gradients=seed=7:c0=0x2040c0:c1=0xe0a020:x0=0:y0=0:x1=320:y1=192"
SCENES = ["testsrc2", "smptebars", "mandelbrot", "rgbtestsrc", "cellauto=seed=7", "life=mold=10:ratio=0.3:seed=7",
          GRADIENTS, "testsrc"]
DRIFT = "format=gray,eq=brightness=0.3*sin(2.1*t):contrast=1+0.5*sin(1.3*t):eval=frame,format=yuv420p"

# Nine structurally different sources for the retrieval acceptance test.
RETRIEVAL_SCENES = ["testsrc2", "smptebars", "mandelbrot", "rgbtestsrc", "cellauto=seed=7:rule=110",
                    "life=mold=10:ratio=0.3:seed=7", GRADIENTS, "testsrc", "sierpinski=seed=3:jump=1"]


def _hash(scene: int, channel: int) -> str:
    """An FFmpeg expression in [0, 1): a fixed pseudo-random value per frame ``n``, scene and channel."""
    return f"mod(abs(sin(n*12.9898+{scene * 7.31 + channel * 3.17:.3f})*43758.5453),1)"


def handheld(scene: int) -> str:
    """A hand-held grey look: each frame its own pan, zoom (55-95% of the picture), exposure and contrast.

    Drawn independently per frame and per scene, so neither the time, the position in the
    picture nor the brightness ties a frame to its scene: only what the scene shows does.
    """
    zoom, x, y, bright, contrast = (_hash(scene, k) for k in (5, 6, 7, 0, 1))
    return (f"crop=w='iw*(0.55+0.4*{zoom})':h='ih*(0.55+0.4*{zoom})':x='(iw-ow)*{x}':y='(ih-oh)*{y}',"
            f"scale=320:192,format=gray,eq=brightness='0.5*({bright}-0.5)':contrast='0.6+0.8*{contrast}'"
            ":eval=frame,format=yuv420p")


def make_scene_frames(folder: Path, *, scenes: list[str] = SCENES, seconds: float = 6.0, fps: int = 4,
                      short_side: int = 96, look: Callable[[int], str] = lambda i: DRIFT) -> dict[str, list[Path]]:
    """Write ``seconds * fps`` JPEG frames per scene under ``folder/{i}/``.

    Args:
        look: scene position -> the FFmpeg filter chain applied before scaling.
    Returns:
        scene name -> its frame files in time order.
    """
    out: dict[str, list[Path]] = {}
    for i, scene in enumerate(scenes):
        name, _, options = scene.partition("=")
        source = f"{name}=size=320x192:rate={fps}" + (f":{options}" if options else "")
        target = folder / str(i)
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run([ffmpeg_path(), "-v", "error", "-y", "-f", "lavfi", "-i", source, "-t", str(seconds),
                        "-vf", f"{look(i)},scale=-2:{short_side}", "-q:v", "5", str(target / "f%03d.jpg")],
                       check=True, capture_output=True)
        out[scene] = sorted(target.glob("*.jpg"))
    return out


def insert_day(Session, root: Path, date: dt.date, scenes: dict[str, list[Path]]) -> dict[int, list[int]]:
    """One Source and Clip per scene and a Frame row per file, dated ``date``.

    Returns:
        clip id -> its frame ids.
    """
    from memory.schema import Clip, Frame, Source

    made: dict[int, list[int]] = {}
    with Session() as session:
        for k, (scene, frames) in enumerate(scenes.items()):
            source = Source(date=date.isoformat(), path=f"data/raw/{date}/{k}.mp4", content_hash=f"{date}-{k}",
                            size_bytes=1, status="ok", has_video=True)
            clip = Clip(source=source, date=date.isoformat(), index=0, start_s=0.0, end_s=float(len(frames)))
            clip.frames = [Frame(t_s=float(j), path=str(f.relative_to(root))) for j, f in enumerate(frames)]
            session.add(clip)
            session.flush()
            made[clip.id] = [f.id for f in clip.frames]
        session.commit()
    return made
