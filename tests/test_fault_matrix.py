"""kill -9 at random points of every stage (issue #18): the rerun completes the night with the
same counts as a night never killed, nothing twice, nothing temporary left, ``doctor`` clean.

One chain per seed: the night runs in its own session and is killed (SIGKILL to the whole
process group, FFmpeg included, as systemd or the OOM killer would) at a random moment of
its first stage; the rerun is killed at a random moment of the next stage, and so on through
every stage; a last rerun must finish the night. A moment is drawn uniformly over 1.2 x the
stage's duration in an uninterrupted night, so some land in its first instants, some near its
end and a few just after it. The default run has 3 chains (3 points a stage), the slow run 20
more; and the same again for a sealed memory (``memory.encryption: on``, the passphrase from
``SLEEP_PASSPHRASE_FILE``): 1 chain by default, 5 more in the slow run. A sealed night's
rerun must leave exactly what a plain night leaves: the same rows and the same files.
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, make_media

from core import vault
from core.atomic import TMP_MARK
from core.keys import ScryptCost, init_key, unlock
from core.paths import Paths
from memory.cipher_db import cipher_connect
from memory.doctor import doctor

DATE = "2026-01-15"
# The tiny config with its longest trainers cut short: what is tested is where a night can
# die, not how well it learns.
FAST = ["models.reconstruct.min_steps=40", "models.reconstruct.max_steps=40", "models.inpaint.steps=20",
        "dream.steps=10", "models.jepa.steps=20", "models.align.min_steps=40", "models.align.max_steps=40"]
# Tables whose row counts a finished night fixes, and the columns that must not repeat.
TABLES = ("sources", "clips", "frames", "audio_segments", "shards", "shard_rows", "keepsakes",
          "episodes", "episode_clips", "highlights", "stage_runs", "checkpoint_sums")
UNIQUE = {"clips": "source_id, start_s", "frames": "path", "audio_segments": "path",
          "shard_rows": "shard_id, clip_id, modality, coalesce(frame_id, -1)", "shards": "path",
          "episode_clips": "clip_id"}


PASSPHRASE = "fault matrix passphrase"


def _key_path(root: Path) -> Path:
    return root / "memory" / "key.json"


def _sealed(root: Path) -> bool:
    return _key_path(root).exists()


def _command(root: Path) -> list[str]:
    args = [sys.executable, str(REPO / "sleep.py"), "--date", DATE, "--root", str(root),
            "--config", str(REPO / "configs/tiny.yaml")]
    for override in FAST + (["memory.encryption=true"] if _sealed(root) else []):
        args += ["--set", override]
    return args


def _env(root: Path) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if _sealed(root):
        env["SLEEP_PASSPHRASE_FILE"] = str(root.parent / "passphrase")
    return env


def _seal(root: Path) -> None:
    """Give ``root`` a master key (a cheap scrypt: the cost is not what is tested) and the
    passphrase file the night reads it from."""
    init_key(_key_path(root), PASSPHRASE, cost=ScryptCost(n=2**12))
    secret = root.parent / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    secret.chmod(0o600)


def _connect(root: Path, timeout: float):
    """The memory's database: plain SQLite, or SQLCipher with the memory's key."""
    db = root / "memory" / "episodic.sqlite"
    if _sealed(root):
        return cipher_connect(db, unlock(_key_path(root), PASSPHRASE), timeout=timeout)
    return sqlite3.connect(db, timeout=timeout)


def _ledger(root: Path) -> dict[str, tuple[str, float | None]]:
    if not (root / "memory" / "episodic.sqlite").exists():
        return {}
    try:
        con = _connect(root, timeout=5)
        try:
            return {stage: (status, seconds) for stage, status, seconds in con.execute(
                "SELECT stage, status, seconds FROM stage_runs WHERE date = ? ORDER BY started_at", (DATE,))}
        finally:
            con.close()
    except Exception as exc:  # tables not made yet, or a writer holds the lock (sqlite3's or sqlcipher3's)
        if type(exc).__name__ not in ("OperationalError", "DatabaseKeyError"):
            raise
        return {}


def census(root: Path) -> dict:
    """What a finished night leaves: row counts, repeated rows, files by folder, ledger states."""
    found: dict = {}
    with contextlib.closing(_connect(root, timeout=30)) as con:
        for table in TABLES:
            found[table] = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        for table, columns in UNIQUE.items():
            found[f"{table} repeated"] = con.execute(
                f"SELECT count(*) FROM (SELECT 1 FROM {table} GROUP BY {columns} HAVING count(*) > 1)").fetchone()[0]
        found["shard rows by space"] = dict(con.execute(
            "SELECT e.name, count(*) FROM shard_rows r JOIN shards s ON s.id = r.shard_id "
            "JOIN embedding_spaces e ON e.id = s.space_id GROUP BY e.name ORDER BY e.name").fetchall())
        found["ledger"] = dict(con.execute("SELECT stage, status FROM stage_runs WHERE date = ?", (DATE,)).fetchall())
    for folder in ("data/frames", "data/audio", "memory/embeddings", "memory/keep", "checkpoints"):
        found[folder] = sum(1 for p in (root / folder).rglob("*") if p.is_file())
    found["temporaries"] = sorted(str(p.relative_to(root)) for p in root.rglob(f"*{TMP_MARK}*"))
    found["report"] = (root / "reports" / DATE / "index.html").is_file()
    return found


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict, dict]:
    """The day's media, and the census and stage durations of a night run without a kill."""
    media = tmp_path_factory.mktemp("media")
    for i, scene in enumerate(["testsrc2", "smptebars"]):
        make_media(media / f"VID_20260115_0{i}0000.mp4", seconds=12, video=f"{scene}=size=160x120:rate=10")
    root = tmp_path_factory.mktemp("reference") / "root"
    shutil.copytree(media, root / "data" / "raw" / DATE)
    done = subprocess.run(_command(root), env=_env(root), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    durations = {stage: seconds or 0.0 for stage, (_, seconds) in _ledger(root).items()}
    return media, census(root), durations


def _kill_during(root: Path, stage: str, seconds: float, rng: random.Random) -> str:
    """Start the night; SIGKILL it a random moment into ``stage``; say what happened."""
    night = subprocess.Popen(_command(root), env=_env(root), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and night.poll() is None:
            status = _ledger(root).get(stage, ("", None))[0]
            if status in ("running", "done", "failed"):
                break
            time.sleep(0.01)
        if night.poll() is not None:
            return f"{stage}: the night ended first (rc {night.returncode})"
        time.sleep(rng.uniform(0, 1.2 * seconds))
        os.killpg(night.pid, signal.SIGKILL)
        night.wait(timeout=30)
        return f"{stage}: killed"
    finally:
        if night.poll() is None:
            os.killpg(night.pid, signal.SIGKILL)
            night.wait(timeout=30)


def _chain(reference, tmp_path: Path, seed: int, sealed: bool = False) -> None:
    media, expected, durations = reference
    root = tmp_path / "root"
    shutil.copytree(media, root / "data" / "raw" / DATE)
    if sealed:
        _seal(root)
    rng = random.Random(seed)
    log = [_kill_during(root, stage, seconds, rng) for stage, seconds in durations.items()]
    # Every stage but perhaps the last instant ones was really interrupted.
    assert sum(line.endswith("killed") for line in log) >= len(log) - 2, log
    time.sleep(0.3)  # orphaned FFmpeg children die with their pipes
    done = subprocess.run(_command(root), env=_env(root), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (log, done.stderr[-3000:])
    assert census(root) == expected, log
    if sealed:
        vault.register(root, unlock(_key_path(root), PASSPHRASE))
    try:
        report = doctor(Paths.at(root), read_data=True)
    finally:
        vault.forget_all()
    assert report["problems"] == [], (log, report)


@pytest.mark.parametrize("seed", range(3))
def test_a_night_killed_in_every_stage_is_completed_by_the_rerun(reference, tmp_path, seed):
    _chain(reference, tmp_path, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3, 23))
def test_twenty_more_kills_in_every_stage(reference, tmp_path, seed):
    _chain(reference, tmp_path, seed)


def test_a_sealed_night_killed_in_every_stage_is_completed_by_the_rerun(reference, tmp_path):
    # Compared with the plain night's census: sealing changes what is in the files, never
    # which rows and files a night leaves.
    _chain(reference, tmp_path, seed=100, sealed=True)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(101, 106))
def test_five_more_sealed_chains(reference, tmp_path, seed):
    _chain(reference, tmp_path, seed, sealed=True)
