"""Benchmark: ingest of a generated day against a bare FFmpeg decode of the same files.

    python bench/ingest.py                 # 10 minutes of 720p30 + audio in 5 files
    python bench/ingest.py --minutes 2 --files 2

The day is made with FFmpeg's lavfi sources (testsrc2 at 1280x720, 30 fps, H.264
``veryfast`` with a 1 s GOP and B-frames like a phone, AAC 48 kHz stereo) and kept in
``--workdir`` so later runs skip the generation. In the same run it measures

* the baseline: ``ffmpeg -i F -f null -`` over every file, one after another (FFmpeg's
  own threads use every core), i.e. the cost of decoding the footage and nothing else;
* ingest: the ``ingest`` stage of a night on a fresh root holding the same files
  (hashing, probing, frames, audio segments, clip files, database rows, report), with
  the config given (default ``configs/default.yaml``: 256 px frames, clip files on,
  one worker per core);

and prints both, and their ratio. Repeats alternate the two and keep each one's best.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.config import load_config
from core.paths import Paths
from ingest.binaries import ffmpeg_path
from pipeline.runner import run_night

DATE = dt.date(2026, 1, 15)


def generate_day(folder: Path, minutes: float, files: int) -> list[Path]:
    """``files`` recordings adding up to ``minutes`` of 720p30 video with audio (cached)."""
    folder.mkdir(parents=True, exist_ok=True)
    seconds = minutes * 60 / files
    out = []
    for i in range(files):
        path = folder / f"VID_{DATE:%Y%m%d}_{9 + i:02d}0000_{seconds:.0f}s.mp4"
        if not path.exists():
            print(f"generating {path.name} ({seconds:.0f} s of 720p30) ...", flush=True)
            tmp = path.with_suffix(".part.mp4")
            subprocess.run([ffmpeg_path(), "-v", "error", "-y",
                            "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
                            "-f", "lavfi", "-i", f"sine=frequency={220 * (i + 1)}:sample_rate=48000",
                            "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-g", "30",
                            "-pix_fmt", "yuv420p", "-c:a", "aac", "-ac", "2", str(tmp)], check=True)
            tmp.rename(path)
        out.append(path)
    return out


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and every child it has waited for."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def bare_decode(files: list[Path]) -> tuple[float, float]:
    """(wall, CPU) seconds for ``ffmpeg -i F -f null -`` over every file, one after another."""
    started, cpu = time.perf_counter(), cpu_seconds()
    for f in files:
        subprocess.run([ffmpeg_path(), "-nostdin", "-v", "error", "-i", str(f), "-f", "null", "-"],
                       check=True)
    return time.perf_counter() - started, cpu_seconds() - cpu


def ingest_day(files: list[Path], workdir: Path, config: Path | None) -> tuple[float, float, dict]:
    """(wall, CPU) seconds and result of the ingest stage on a fresh root holding ``files``."""
    root = workdir / "root"
    shutil.rmtree(root, ignore_errors=True)
    raw = Paths.at(root).raw(DATE)
    raw.mkdir(parents=True)
    for f in files:
        try:
            os.link(f, raw / f.name)
        except OSError:
            shutil.copy2(f, raw / f.name)
    cfg = load_config(config)
    started, cpu = time.perf_counter(), cpu_seconds()
    outcome = run_night(DATE, cfg, Paths.at(root), only=["ingest"], device="cpu")
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    if outcome.states.get("ingest") != "done":
        raise SystemExit(f"ingest failed: {outcome.errors}")
    summary = json.loads((Paths.at(root).report(DATE) / "summary.json").read_text())
    return seconds, cpu, summary["ingest"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="footage in the day")
    parser.add_argument("--files", type=int, default=5, help="number of recordings")
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "work",
                        help="generated media and the scratch root (kept between runs)")
    parser.add_argument("--config", type=Path, default=None, help="config (default: configs/default.yaml)")
    parser.add_argument("--repeat", type=int, default=1, help="alternate both measures this many times")
    args = parser.parse_args()

    files = generate_day(args.workdir / "media", args.minutes, args.files)
    decodes, ingests = [], []
    result = {}
    for _ in range(args.repeat):
        decodes.append(bare_decode(files))
        *measured, result = ingest_day(files, args.workdir, args.config)
        ingests.append(tuple(measured))
    (decode, decode_cpu), (ingest, ingest_cpu) = min(decodes), min(ingests)
    footage = result["footage_seconds"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}")
    print(f"footage: {footage:.0f} s in {len(files)} files of 1280x720 30 fps H.264 + AAC "
          f"({sum(f.stat().st_size for f in files) / 1e6:.0f} MB)")
    print(f"ingest output: {result['clips']} clips, {result['frames']} frames, "
          f"{result['audio_segments']} audio segments")
    print(f"bare decode (ffmpeg -i F -f null -): {decode:.2f} s wall, {decode_cpu:.2f} s CPU "
          f"({footage / decode:.1f}x real time)")
    print(f"ingest (stage, hashing to DB):       {ingest:.2f} s wall, {ingest_cpu:.2f} s CPU "
          f"({footage / ingest:.1f}x real time)")
    print(f"ratio ingest / bare decode:          {ingest / decode:.2f} wall, {ingest_cpu / decode_cpu:.2f} CPU "
          f"(target <= 1.30; best of {args.repeat})")


if __name__ == "__main__":
    main()
