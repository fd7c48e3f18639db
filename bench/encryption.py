"""What ``memory.encryption: on`` costs a night, a query and ``doctor``: the same day twice.

    python bench/encryption.py                         # 3 files x 60 s, configs/tiny.yaml, CPU
    python bench/encryption.py --files 6 --seconds 120 --set models.jepa.steps=200

A day of FFmpeg scenes (testsrc2, smptebars, mandelbrot... over a tone and pink noise, 640x360
at 30 fps, H.264 + AAC) is made once under ``--workdir``. Two fresh roots get the same day
linked into ``data/raw``: one plain (the baseline, measured in the same run), one with a
master key and ``memory.encryption: on``. Each night runs in its own process (``sleep.py
run``, as cron would, the passphrase from ``SLEEP_PASSPHRASE_FILE``), one after the other;
then in each root an image query (a fresh process, so the sealed one pays its unlock and
opens every shard it reads) and ``doctor --read-data``.

Printed: per stage the plain and sealed wall time (the runner's own figures, from the
ledger) and their ratio; the night, the query and the doctor likewise; the bytes each root
holds. The unlock (scrypt, n=2**17) is part of the sealed figures, as it is for a user.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.keys import init_key  # noqa: E402
from ingest.binaries import ffmpeg_path  # noqa: E402

DATE = "2026-02-02"
PASSPHRASE = "bench passphrase"
SCENES = ("testsrc2", "smptebars", "mandelbrot", "rgbtestsrc", "cellauto", "life")


def _make_day(folder: Path, files: int, seconds: float) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(files):
        path = folder / f"VID_20260202_{9 + i:02d}0000.mp4"
        if not path.exists():
            scene = SCENES[i % len(SCENES)]
            video = f"{scene}=size=640x360:rate=30" if scene not in ("cellauto", "life") else \
                f"{scene}=size=640x360:rate=30,format=yuv420p"
            cmd = [ffmpeg_path(), "-v", "error", "-y", "-f", "lavfi", "-i", video,
                   "-f", "lavfi", "-i", f"sine=frequency={220 + 110 * i}:sample_rate=48000",
                   "-f", "lavfi", "-i", "anoisesrc=color=pink:sample_rate=48000:amplitude=0.1",
                   "-filter_complex", "[1:a][2:a]amix=inputs=2[a]", "-map", "0:v", "-map", "[a]",
                   "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                   "-c:a", "aac", str(path) + ".part.mp4"]
            subprocess.run(cmd, check=True)
            os.replace(str(path) + ".part.mp4", path)
        made.append(path)
    return made


def _root(base: Path, name: str, recordings: list[Path]) -> Path:
    root = base / name
    shutil.rmtree(root, ignore_errors=True)
    raw = root / "data" / "raw" / DATE
    raw.mkdir(parents=True)
    for recording in recordings:
        os.link(recording, raw / recording.name)
    return root


def _run(args: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(REPO / "sleep.py"), *args], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"sleep.py {' '.join(args[:2])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def _stage_seconds(root: Path, env: dict, options: list[str]) -> dict[str, float]:
    done = subprocess.run([sys.executable, str(REPO / "sleep.py"), "status", "--json", "--root", str(root)],
                          env=env, capture_output=True, text=True, check=True)
    night = json.loads(done.stdout)["nights"][DATE]
    return {name: s["seconds"] for name, s in night.items() if s["seconds"] is not None}


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and "raw" not in p.parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3, help="recordings in the day (default 3)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each recording (default 60)")
    parser.add_argument("--config", default=str(REPO / "configs" / "tiny.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workdir", default=str(REPO / "bench" / "work" / "encryption"))
    parser.add_argument("--json", action="store_true", help="print the figures as JSON at the end")
    args = parser.parse_args()

    base = Path(args.workdir)
    recordings = _make_day(base / "day", args.files, args.seconds)
    secret = base / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    os.chmod(secret, 0o600)
    env = {**os.environ, "TQDM_DISABLE": "1", "SLEEP_PASSPHRASE_FILE": str(secret)}

    figures: dict[str, dict] = {}
    for name in ("plain", "sealed"):
        root = _root(base, name, recordings)
        options = ["--root", str(root), "--config", args.config]
        for override in args.overrides + (["memory.encryption=true"] if name == "sealed" else []):
            options += ["--set", override]
        if name == "sealed":
            init_key(root / "memory" / "key.json", PASSPHRASE)  # scrypt's default cost, as a user's
        night = _run(["run", "--date", DATE, *options], env)
        stages = _stage_seconds(root, env, options)
        frame = next(p for p in (base / "day").glob("*.mp4"))
        probe = base / "probe.jpg"
        subprocess.run([ffmpeg_path(), "-v", "error", "-y", "-ss", "20", "-i", str(frame), "-frames:v", "1",
                        str(probe)], check=True)
        query = _run(["query", "--image", str(probe), "--json", *options], env)
        doctor = _run(["doctor", "--read-data", "--root", str(root)], env)  # doctor takes no --config
        figures[name] = {"night_s": night, "stages_s": stages, "query_s": query, "doctor_s": doctor,
                         "bytes": _size(root)}

    plain, sealed = figures["plain"], figures["sealed"]
    print(f"machine: {platform.node()} {os.cpu_count()} cores, {platform.processor() or platform.machine()}")
    print(f"day: {args.files} x {args.seconds:.0f} s, config {Path(args.config).name} {' '.join(args.overrides)}")
    print(f"{'':<14}{'plain s':>10}{'sealed s':>10}{'ratio':>8}")
    for stage in plain["stages_s"]:
        a, b = plain["stages_s"][stage], sealed["stages_s"].get(stage)
        if b is not None:
            print(f"{stage:<14}{a:>10.2f}{b:>10.2f}{b / max(a, 1e-9):>8.2f}")
    for key, label in (("night_s", "night (process)"), ("query_s", "image query"), ("doctor_s", "doctor --read-data")):
        print(f"{label:<14}{plain[key]:>10.2f}{sealed[key]:>10.2f}{sealed[key] / plain[key]:>8.2f}")
    print(f"{'bytes':<14}{plain['bytes']:>10}{sealed['bytes']:>10}{sealed['bytes'] / plain['bytes']:>8.3f}")
    if args.json:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
