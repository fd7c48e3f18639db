"""Two days of real FFmpeg media, visually and audibly far apart, for the tests that run
several nights on one root (re-embedding, probes)."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from conftest import make_media

DAY1, DAY2 = dt.date(2026, 1, 15), dt.date(2026, 1, 16)
# Colour test patterns on day 1, grey cellular automata on day 2; one tone per recording.
SCENES = {DAY1: ["testsrc2", "mandelbrot"], DAY2: ["cellauto=seed=7", "life=mold=10:ratio=0.3:seed=7"]}
TONES = [300, 1500]


def record_day(root: Path, date: dt.date) -> None:
    """``data/raw/{date}/VID_{i}.mp4``: 12 s of each of the day's scenes, with its tone."""
    for i, scene in enumerate(SCENES[date]):
        name, _, options = scene.partition("=")
        video = f"{name}=size=320x240:rate=10" + (f":{options}" if options else "")
        make_media(root / "data" / "raw" / date.isoformat() / f"VID_{i}.mp4", seconds=12, video=video,
                   audio=f"sine=frequency={TONES[i]}:sample_rate=44100")
