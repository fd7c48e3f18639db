"""A night on a full disk: a clear message, nothing half-committed, and the next run on free
space completes it.

A full disk is simulated with a file size limit (``RLIMIT_FSIZE``, SIGXFSZ ignored): a write
past it fails with EFBIG as one on a full disk fails with ENOSPC. The limit is per file, so
each case picks one that only the file it aims at exceeds; the database's write-ahead log
(about 0.6 MB by the end of ingest, 1.1 MB by the end of a tiny night) sets the floor.
"""
from __future__ import annotations

import errno
import json
import multiprocessing
import os
import pickle
import resource
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, make_media, run_cli

from core.atomic import TMP_MARK
from core.diskfull import DiskFull, disk_full_in, ffmpeg_disk_full
from core.errors import SleepError
from ingest.extract import _raise_if_disk_full

DATE = "2026-01-15"
CONFIG = str(REPO / "configs/tiny.yaml")


# -- recognising a full disk --------------------------------------------------------------


def test_disk_full_names_the_file_and_crosses_a_process_pool():
    full = DiskFull("/r/checkpoints/jepa/2026-01-15.pt", errno.EFBIG)
    assert str(full) == ("disk full writing /r/checkpoints/jepa/2026-01-15.pt (File too large): "
                         "free space and rerun")
    assert isinstance(full, SleepError) and isinstance(full, OSError) and full.exit_code == 1
    back = pickle.loads(pickle.dumps(full))
    assert type(back) is DiskFull and str(back) == str(full)


def test_a_full_disk_is_found_anywhere_in_the_chain(tmp_path):
    where = {"database": tmp_path / "db.sqlite", "folder": tmp_path}
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "a.npy"))
        except OSError as exc:
            raise RuntimeError("saving failed") from exc
    except RuntimeError as exc:
        assert disk_full_in(exc, **where).filename == str(tmp_path / "a.npy")
    # A write to a file object names no file: the folder is named instead.
    assert disk_full_in(OSError(errno.EFBIG, "File too large"), **where).filename == str(tmp_path)
    assert disk_full_in(OSError(errno.EACCES, "Permission denied"), **where) is None
    assert disk_full_in(ValueError("bad"), **where) is None


def test_sqlite_with_no_room_names_the_database(tmp_path):
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (x)")
    db.execute("PRAGMA max_page_count = 2")
    with pytest.raises(sqlite3.OperationalError) as caught:
        db.executemany("INSERT INTO t VALUES (?)", [("x" * 1000,)] * 100)
    full = disk_full_in(caught.value, database=tmp_path / "episodic.sqlite", folder=tmp_path)
    assert full is not None and full.filename == str(tmp_path / "episodic.sqlite")


@pytest.mark.parametrize("returncode, stderr, code", [
    (-signal.SIGXFSZ, "", errno.EFBIG),  # killed at a file size limit
    (1, "[image2 @ 0x1] Could not write frame: No space left on device\n", errno.ENOSPC),
    (229, "av_interleaved_write_frame(): File too large\nError muxing a packet\n", errno.EFBIG),
    (0, "Error writing trailer: Disk quota exceeded\n", errno.EDQUOT),  # exit 0, still no room
])
def test_ffmpeg_out_of_room_is_disk_full_not_a_bad_file(tmp_path, returncode, stderr, code):
    finals = {"frames": tmp_path / "frames" / "k", "audio": tmp_path / "audio" / "k"}
    tmp = {name: folder.with_name(".k.tmp-1") for name, folder in finals.items()}
    proc = subprocess.CompletedProcess([], returncode, "", stderr)
    with pytest.raises(DiskFull) as caught:
        _raise_if_disk_full(proc, tmp, finals)
    assert caught.value.errno == code and caught.value.filename == str(tmp_path)


def test_ffmpeg_naming_its_output_names_that_folder(tmp_path):
    finals = {"frames": tmp_path / "frames" / "k", "audio": tmp_path / "audio" / "k"}
    tmp = {name: folder.with_name(".k.tmp-1") for name, folder in finals.items()}
    stderr = f"[segment @ 0x1] Failed to open segment '{tmp['audio']}/00003.wav': File too large\n"
    with pytest.raises(DiskFull) as caught:
        _raise_if_disk_full(subprocess.CompletedProcess([], 1, "", stderr), tmp, finals)
    assert caught.value.filename == str(finals["audio"])


def test_a_damaged_file_is_not_disk_full():
    assert ffmpeg_disk_full("Invalid data found when processing input\n") is None
    proc = subprocess.CompletedProcess([], 1, "", "moov atom not found\n")
    _raise_if_disk_full(proc, {}, {})  # raises nothing: ingest records a bad file


# -- a shard write that finds no room ----------------------------------------------------


def _write_big_shard_past_the_limit(root: str, results) -> None:
    """In a process of its own: a day's small shard, then a 1 MB rewrite of it past a
    0.6 MB file size limit; reports what was raised."""
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    from memfill import add_day

    from core.paths import Paths
    from memory.db import open_database
    from memory.store import EmbeddingRow, write_embeddings

    paths = Paths.at(root)
    engine = open_database(paths.database)
    ids = add_day(engine, paths, DATE, 4)
    rows = [EmbeddingRow(c, "vision") for c in ids]
    first = write_embeddings(engine, paths, space="vision", model_version="jepa@2026-01-01",
                             date=DATE, rows=rows, vectors=np.eye(4, 256, dtype=np.float32))
    with engine.connect() as conn:  # the log emptied, so only the shard can meet the limit
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, resource.RLIM_INFINITY))
    big = np.random.default_rng(0).standard_normal((2048, 256)).astype(np.float32)
    try:
        write_embeddings(engine, paths, space="vision", model_version="jepa@2026-01-01", date=DATE,
                         rows=[rows[i % 4] for i in range(2048)], vectors=big)
        results.put((first.path, None, None))
    except Exception as exc:  # noqa: BLE001 - the test asserts what it was
        results.put((first.path, type(exc).__name__, str(exc)))
    engine.dispose()


def test_a_shard_write_with_no_room_leaves_the_old_shard(root):
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    writer = ctx.Process(target=_write_big_shard_past_the_limit, args=(str(root), results))
    writer.start()
    first, raised, message = results.get(timeout=120)
    writer.join(30)
    assert raised == "DiskFull", message
    folder = root / "memory" / "embeddings" / "vision" / "jepa@2026-01-01"
    assert message.startswith(f"disk full writing {folder}/{DATE}-") and message.endswith(
        ".npy (File too large): free space and rerun")
    assert [p.name for p in folder.iterdir()] == [Path(first).name]  # no temporary left
    from core.paths import Paths
    from memory.db import open_database
    from memory.doctor import doctor
    from memory.store import load_vectors

    paths = Paths.at(root)
    engine = open_database(paths.database)
    rows, vectors = load_vectors(engine, paths, space="vision", model_version="jepa@2026-01-01",
                                 date=DATE)
    engine.dispose()
    assert len(rows) == 4 and np.allclose(vectors, np.eye(4, 256), atol=1e-3)
    assert doctor(paths)["problems"] == []


# -- a night on a full disk, then on free space -------------------------------------------


def _night_args(root: Path, extra: list[str]) -> list[str]:
    return ["--date", DATE, "--root", str(root), "--config", CONFIG, "--set", "ingest.workers=1",
            *extra]


def _night_past_limit(root: Path, limit: int, extra: list[str]) -> subprocess.CompletedProcess:
    """``sleep.py`` with every file it (and FFmpeg) writes limited to ``limit`` bytes."""
    def limit_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, str(REPO / "sleep.py"), *_night_args(root, extra)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env, check=False,
                          preexec_fn=limit_files)


def _counts(root: Path) -> dict:
    with sqlite3.connect(root / "memory" / "episodic.sqlite") as con:
        count = lambda sql: con.execute(sql).fetchone()[0]
        return {"sources": count("SELECT count(*) FROM sources WHERE status = 'ok'"),
                "failed_sources": count("SELECT count(*) FROM sources WHERE status != 'ok'"),
                "clips": count("SELECT count(*) FROM clips"),
                "frames": count("SELECT count(*) FROM frames"),
                "audio_segments": count("SELECT count(*) FROM audio_segments"),
                "ledger_rows": count("SELECT count(*) FROM stage_runs")}


def _doctor_problems(root: Path) -> list:
    report = run_cli("doctor", "--root", str(root), "--json")
    assert report.returncode == 0, report.stderr
    return json.loads(report.stdout)["problems"]


def _status(root: Path) -> dict:
    return json.loads(run_cli("status", "--root", str(root), "--json").stdout)["nights"][DATE]


# Ingest's frames are 1080 px noise (about 0.9 MB each): the limit fails FFmpeg's first frame.
BIG_FRAMES = ["--set", "ingest.frame_short_side=1080"]
CASES = {
    "ingest": (800_000, BIG_FRAMES, "data", "1440x1080", ",noise=alls=60:allf=t"),
    # the vision checkpoint (about 2 MB) is the first file of the night past 1.5 MB
    "vision": (1_500_000, [], f"checkpoints/jepa/{DATE}.pt", "160x120", ""),
    # the dream decoder's checkpoint (about 3.3 MB), late in the night
    "dream": (2_600_000, [], f"checkpoints/dream/{DATE}.pt", "160x120", ""),
}


@pytest.mark.parametrize("stage", [
    "ingest", "vision", pytest.param("dream", marks=pytest.mark.slow)])
def test_a_night_on_a_full_disk_stops_clearly_and_its_rerun_completes(root, stage):
    limit, extra, named, size, noise = CASES[stage]
    raw = root / "data" / "raw" / DATE
    for i, scene in enumerate(["testsrc2", "smptebars"]):
        make_media(raw / f"VID_20260115_0{i}0000.mp4", seconds=15,
                   video=f"{scene}=size={size}:rate=2{noise}")

    full = _night_past_limit(root, limit, extra)
    assert full.returncode == 1, full.stderr[-3000:]
    message = f"disk full writing {root / named} (File too large): free space and rerun"
    assert f"sleep: error: {message}" in full.stderr
    assert f"{stage:<12} failed" in full.stdout and message in full.stdout
    assert "Traceback" not in full.stderr  # one line, not a raw traceback
    # Nothing half-done: no temporary file, no output of the failed stage, and nothing
    # recorded as a bad recording.
    assert [p for p in root.rglob(f"*{TMP_MARK}*")] == []
    if stage == "ingest":
        assert not list((root / "data" / "frames").rglob("*.jpg"))
        assert _counts(root)["clips"] == _counts(root)["failed_sources"] == 0
    else:
        assert not (root / named).exists()
    states = {name: s["status"] for name, s in _status(root).items()}
    assert states[stage] == "failed" and list(states)[-1] == stage  # the night stopped there
    assert _doctor_problems(root) == []

    rerun = run_cli(*_night_args(root, extra), env={"TQDM_DISABLE": "1"})
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    stages = _status(root)
    assert all(s["status"] == "done" for s in stages.values()), stages
    assert stages[stage]["attempts"] == 2
    # As a night that never failed: 2 files of 15 s in 3 s clips, a frame a second.
    counts = _counts(root)
    assert {k: counts[k] for k in ("sources", "failed_sources", "clips", "frames",
                                   "audio_segments")} == {
        "sources": 2, "failed_sources": 0, "clips": 10, "frames": 30, "audio_segments": 10}
    assert counts["ledger_rows"] == len(stages)  # each stage once
    assert _doctor_problems(root) == []
    assert [p for p in root.rglob(f"*{TMP_MARK}*")] == []
