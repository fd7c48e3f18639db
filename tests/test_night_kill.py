"""A night killed mid-stage (SIGKILL) and rerun: it completes, each stage is done once,
and nothing temporary or half-written remains."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, make_media, run_cli

from core.atomic import TMP_MARK

DATE = "2026-01-15"


def _ingest_status(db: Path) -> str | None:
    if not db.exists():
        return None
    try:
        with sqlite3.connect(db, timeout=5) as con:
            row = con.execute("SELECT status FROM stage_runs WHERE date=? AND stage='ingest'",
                              (DATE,)).fetchone()
    except sqlite3.OperationalError:  # tables not created yet
        return None
    return row[0] if row else None


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(f"*{TMP_MARK}*")]


def test_night_killed_mid_stage_is_completed_by_the_rerun(root):
    raw = root / "data" / "raw" / DATE
    for i, scene in enumerate(["testsrc2", "smptebars", "rgbtestsrc"]):
        make_media(raw / f"VID_20260115_0{i}0000.mp4", seconds=45,
                   video=f"{scene}=size=320x240:rate=25")
    args = ["--date", DATE, "--root", str(root), "--config", str(REPO / "configs/tiny.yaml"),
            "--set", "ingest.workers=1"]
    # A new session, so the kill reaches the whole process group as systemd's would.
    night = subprocess.Popen([sys.executable, str(REPO / "sleep.py"), *args], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    frames = root / "data" / "frames" / DATE
    deadline = time.monotonic() + 120
    try:
        # Wait until the stage is running and FFmpeg is writing into a temporary folder.
        while time.monotonic() < deadline:
            writing = frames.exists() and any(TMP_MARK in p.name for p in frames.iterdir())
            if writing and _ingest_status(root / "memory" / "episodic.sqlite") == "running":
                break
            assert night.poll() is None, "the night ended before it could be killed"
            time.sleep(0.05)
        else:
            raise AssertionError("ingest never started writing")
        os.killpg(night.pid, signal.SIGKILL)
        night.wait(timeout=30)
    finally:
        if night.poll() is None:
            os.killpg(night.pid, signal.SIGKILL)
    time.sleep(0.5)  # let orphaned FFmpeg children die with their pipes

    status = json.loads(run_cli("status", "--root", str(root), "--json").stdout)
    assert status["nights"][DATE]["ingest"]["status"] == "interrupted"

    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr

    status = json.loads(run_cli("status", "--root", str(root), "--json").stdout)
    stages = status["nights"][DATE]
    assert all(s["status"] == "done" for s in stages.values()), stages
    assert stages["ingest"]["attempts"] == 2  # killed once, done once
    with sqlite3.connect(root / "memory" / "episodic.sqlite") as con:
        assert con.execute("SELECT count(*) FROM stage_runs WHERE date=? AND stage='ingest'",
                           (DATE,)).fetchone()[0] == 1
        assert con.execute("SELECT count(*) FROM sources WHERE status='ok'").fetchone()[0] == 3
        # 45 s each in 3 s clips at 1 fps: 15 clips and 45 frames a file, each exactly once.
        assert con.execute("SELECT count(*) FROM clips").fetchone()[0] == 45
        frame_paths = [r[0] for r in con.execute("SELECT path FROM frames")]
    assert len(frame_paths) == 135 == len(set(frame_paths))
    assert all((root / p).is_file() for p in frame_paths)
    on_disk = sorted(p.relative_to(root).as_posix() for p in frames.rglob("*.jpg"))
    assert on_disk == sorted(frame_paths)
    assert _temporaries(root) == []
