"""How big the morning page of a held-out-sized day is: about 30 recordings, 15 minutes.

    python bench/report_size.py                       # 30 recordings x 30 s, configs/tiny.yaml
    python bench/report_size.py --recordings 10       # a smaller day, to extrapolate from
    python bench/report_size.py --config configs/default.yaml --device cuda

Makes the recordings with FFmpeg's lavfi sources (each 30 s of ten distinct 3-second scenes
with a tone, named ``VID_YYYYMMDD_HHMMSS.mp4`` across the day), runs one night on a fresh
root and prints the size of ``reports/{date}/index.html`` beside the 10 MB the issue allows,
their ratio, and how much of the page is images (data URIs) and which sections weigh most.
"""
from __future__ import annotations

import argparse
import datetime as dt
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.across_nights import make_recording
from core.config import CONFIG_DIR, load_config
from core.paths import Paths
from pipeline.runner import run_night

DAY = dt.date(2026, 3, 10)
LIMIT_BYTES = 10_000_000
SCENE_S = 3


def make_day(paths: Paths, recordings: int, seconds: int) -> list[Path]:
    """``recordings`` files of ``seconds`` each under ``data/raw/{DAY}``, from 08:00 every 20 minutes."""
    scenes = max(1, seconds // SCENE_S)
    files = []
    for r in range(recordings):
        start = dt.datetime.combine(DAY, dt.time(8)) + dt.timedelta(minutes=20 * r)
        name = f"VID_{start:%Y%m%d_%H%M%S}.mp4"
        files.append(make_recording(paths.raw(DAY) / name, list(range(r * scenes, (r + 1) * scenes))))
    return files


def weigh(page: Path) -> tuple[int, int, list[tuple[str, int]]]:
    """``(page bytes, bytes inside data: URIs, [(section id, bytes)] heaviest first)``."""
    html = page.read_text()
    uris = sum(len(m.group(0)) for m in re.finditer(r"data:[a-z/+.-]+;base64,[A-Za-z0-9+/=]+", html))
    starts = [(m.group(1), m.start()) for m in re.finditer(r'<section id="([^"]+)">', html)]
    sections = [(key, (starts[i + 1][1] if i + 1 < len(starts) else len(html)) - at)
                for i, (key, at) in enumerate(starts)]
    return len(html.encode()), uris, sorted(sections, key=lambda s: -s[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recordings", type=int, default=30)
    parser.add_argument("--seconds", type=int, default=30, help="length of each recording")
    parser.add_argument("--config", default=str(CONFIG_DIR / "tiny.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--root", help="folder for the day (default: a temporary one, removed after)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="report-size-") as tmp:
        paths = Paths.at(args.root or Path(tmp) / "root")
        started = time.perf_counter()
        make_day(paths, args.recordings, args.seconds)
        made = time.perf_counter() - started
        outcome = run_night(DAY, load_config(args.config, args.overrides), paths, device=args.device)
        night = time.perf_counter() - started - made
        page = Path(outcome.report_path)
        size, uris, sections = weigh(page)
        print(f"{platform.node()} {platform.machine()}, {args.config}, {dt.date.today()}")
        print(f"day: {args.recordings} recordings x {args.seconds} s = "
              f"{args.recordings * args.seconds / 60:.1f} min (made in {made:.0f} s); night {night:.0f} s, "
              f"ok={outcome.ok} {outcome.errors or ''}")
        print(f"report: {size / 1e6:.2f} MB; limit {LIMIT_BYTES / 1e6:.0f} MB; ratio {size / LIMIT_BYTES:.3f}")
        print(f"images (data URIs): {uris / 1e6:.2f} MB ({uris / size:.0%} of the page)")
        print("heaviest sections: " + ", ".join(f"{key} {n / 1e3:.0f} kB" for key, n in sections[:6]))
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
