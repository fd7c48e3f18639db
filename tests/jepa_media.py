"""Frames of distinct scenes made by FFmpeg's lavfi sources, and DB rows for them.

Used by the vision tests before (and independently of) the ingest stage: each scene is
one source with one clip, whose frames are JPEGs like those ingest writes.
"""
from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

from ingest.binaries import ffmpeg_path

# Grey scenes with brightness and contrast drifting over time: their colours say little,
# so a random encoder (close to a colour histogram) is not already perfect at telling
# them apart and retrieval has room to show what training added.
# life and cellauto are random: seeded so every run sees the same footage.
SCENES = ["testsrc2", "smptebars", "mandelbrot", "rgbtestsrc", "cellauto=seed=7", "life=mold=10:ratio=0.3:seed=7",
          "gradients", "testsrc"]
DRIFT = "format=gray,eq=brightness=0.3*sin(2.1*t):contrast=1+0.5*sin(1.3*t):eval=frame,format=yuv420p"


def make_scene_frames(folder: Path, *, scenes: list[str] = SCENES, seconds: float = 6.0, fps: int = 4,
                      short_side: int = 96) -> dict[str, list[Path]]:
    """Write ``seconds * fps`` JPEG frames per scene under ``folder/{i}/``.

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
                        "-vf", f"{DRIFT},scale=-2:{short_side}", "-q:v", "5", str(target / "f%03d.jpg")],
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
