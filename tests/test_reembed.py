"""One memory across nights: after night 2, earlier days live in night 2's versions too.

Two nights of real FFmpeg media through :func:`pipeline.runner.run_night` with
``configs/tiny.yaml``. Night 2 first runs with ``memory.reembed.max_minutes=0`` (nothing
re-embedded: the snapshot the kill test starts from), then again with the normal budget.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from two_days import DAY1, DAY2, record_day

import api
from core.config import CONFIG_DIR, load_config
from core.paths import Paths
from ingest.binaries import ffmpeg_path
from memory import active_version, coverage, load_vectors, open_database
from pipeline.runner import run_night

STAGES = ["ingest", "keep", "vision", "audio", "align", "sae", "reembed"]
SPACES = ("vision_frame", "vision", "audio", "shared", "sae")
MODELS = {"vision_frame": "jepa", "vision": "jepa", "audio": "cpc", "shared": "align", "sae": "sae"}
TINY = CONFIG_DIR / "tiny.yaml"




def _version(space: str, date: dt.date) -> str:
    return f"{MODELS[space]}@{date.isoformat()}"


@pytest.fixture(scope="module")
def nights(tmp_path_factory) -> dict:
    """Root ``done``: both nights, day 1 re-embedded; ``snapshot``: night 2 before re-embedding."""
    base = tmp_path_factory.mktemp("reembed")
    root = base / "done"
    paths = Paths.at(root)
    record_day(root, DAY1)
    first = run_night(DAY1, load_config(TINY), paths, only=STAGES)
    assert first.ok, first.errors
    with_first = api.versions(root)
    record_day(root, DAY2)
    starved = run_night(DAY2, load_config(TINY, ["memory.reembed.max_minutes=0"]), paths, only=STAGES)
    assert starved.ok, starved.errors
    engine = open_database(paths.database)
    starved_active = {s: active_version(engine, s) for s in SPACES}
    engine.dispose()
    shutil.copytree(root, base / "snapshot")
    second = run_night(DAY2, load_config(TINY), paths, only=STAGES)  # the budget changed: reembed reruns
    assert second.ok and second.states["reembed"] == "done", second.errors
    return {"root": root, "snapshot": base / "snapshot", "after_night_1": with_first,
            "starved_active": starved_active}


def _copy(nights: dict, tmp_path: Path) -> Path:
    target = tmp_path / "root"
    shutil.copytree(nights["snapshot"], target)
    return target


def test_first_night_is_active_at_once(nights):
    table = nights["after_night_1"]
    for space in SPACES:
        [row] = [r for r in table if r["space"] == space]
        assert row["version"] == _version(space, DAY1) and row["active"] and row["complete"]


def test_out_of_time_keeps_the_last_complete_version_active(nights):
    assert nights["starved_active"] == {s: _version(s, DAY1) for s in SPACES}


def test_after_night_two_the_active_versions_cover_both_days(nights):
    engine = open_database(Paths.at(nights["root"]).database)
    try:
        for space in SPACES:
            assert active_version(engine, space) == _version(space, DAY2), space
            cov = coverage(engine, space, _version(space, DAY2))
            assert (cov["days"], cov["days_total"], cov["days_missing"]) == (2, 2, []), cov
            assert cov["missing_clips"] == 0 and cov["clips"] == 16, cov
    finally:
        engine.dispose()
    page = (Paths.at(nights["root"]).report(DAY2) / "index.html").read_text()
    assert "Earlier days into tonight" in page and "could not be drawn" not in page


def test_image_of_a_day_one_moment_is_found_after_night_two(nights, tmp_path):
    root = nights["root"]
    recording = root / "data" / "raw" / DAY1.isoformat() / "VID_0.mp4"
    photo = tmp_path / "photo.png"  # between the stored frames (1 fps at whole seconds): not a stored file
    subprocess.run([ffmpeg_path(), "-v", "error", "-y", "-ss", "4.5", "-i", str(recording), "-frames:v", "1",
                    str(photo)], check=True, capture_output=True)
    hits = api.query(root, image=photo, config=TINY, topk=3)
    assert hits[0].model_version == "jepa@2026-01-16"
    assert hits[0].date == DAY1.isoformat() and hits[0].source_path.endswith("VID_0.mp4"), hits[0]


def _photo(root: Path, date: dt.date, recording: str, at: float, out: Path) -> Path:
    """A frame between the stored ones (1 fps at whole seconds): never a stored file."""
    source = root / "data" / "raw" / date.isoformat() / recording
    subprocess.run([ffmpeg_path(), "-v", "error", "-y", "-ss", str(at), "-i", str(source), "-frames:v", "1",
                    str(out)], check=True, capture_output=True)
    return out


def test_out_of_time_fits_maps_that_reach_the_days_not_re_embedded(nights, tmp_path):
    """Night 2 with no time to re-embed: tonight's encoder reaches day 1 through the map at once."""
    root = _copy(nights, tmp_path)
    summary = json.loads((Paths.at(root).report(DAY2) / "summary.json").read_text())
    for space in ("vision", "audio"):
        fitted = summary["reembed"]["spaces"][space]["map"]
        assert fitted["to_version"] == _version(space, DAY1) and fitted["chosen"] in ("ridge", "procrustes")
        assert fitted[fitted["chosen"]]["pairs"] >= 1, fitted  # held-out figures are reported
    day1 = api.query(root, image=_photo(root, DAY1, "VID_0.mp4", 4.5, tmp_path / "d1.png"), config=TINY, topk=3)
    assert day1[0].model_version == _version("vision", DAY1), day1[0]  # found in night 1's version, via the map
    assert day1[0].date == DAY1.isoformat() and day1[0].source_path.endswith("VID_0.mp4"), day1[0]
    day2 = api.query(root, image=_photo(root, DAY2, "VID_1.mp4", 4.5, tmp_path / "d2.png"), config=TINY, topk=3)
    assert day2[0].model_version == _version("vision", DAY2) and day2[0].date == DAY2.isoformat(), day2[0]
    # Both versions answer one query, each for its own days: no moment comes twice.
    assert len({h.clip_id for h in day1}) == len(day1)


def test_clip_of_tonight_is_found_while_its_version_is_incomplete(nights, tmp_path):
    root = _copy(nights, tmp_path)
    with sqlite3.connect(Paths.at(root).database) as con:
        clip_id = con.execute("SELECT min(id) FROM clips WHERE date = ?", (DAY2.isoformat(),)).fetchone()[0]
    hits = api.query(root, clip=clip_id, topk=3, config=TINY)
    assert hits and hits[0].model_version == "jepa@2026-01-16" and hits[0].date == DAY2.isoformat()


def test_cli_lists_versions_and_a_rerun_does_nothing(nights):
    listed = run_cli("memory", "versions", "--root", str(nights["root"]), "--json")
    assert listed.returncode == 0, listed.stderr
    active = {r["space"]: r["version"] for r in json.loads(listed.stdout) if r["active"]}
    assert {s: active.get(s) for s in SPACES} == {s: _version(s, DAY2) for s in SPACES}
    again = run_cli("memory", "reembed", "--root", str(nights["root"]), "--config", str(TINY), "--json")
    assert again.returncode == 0, again.stderr
    spaces = json.loads(again.stdout)["spaces"]
    assert all(spaces[s]["days_done"] == 0 and spaces[s]["active"] == _version(s, DAY2) for s in SPACES)


def _shard_written(db: Path) -> bool:
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute(
                "SELECT count(*) FROM shards s JOIN embedding_spaces e ON e.id = s.space_id "
                "WHERE e.model_version = ? AND s.date = ? AND s.complete", ("jepa@2026-01-16", DAY1.isoformat())
            ).fetchone()[0] > 0
    except sqlite3.OperationalError:
        return False


def _vectors(root: Path) -> dict:
    paths = Paths.at(root)
    engine = open_database(paths.database)
    try:
        return {s: load_vectors(engine, paths, space=s, model_version=_version(s, DAY2), date=DAY1.isoformat())
                for s in SPACES}
    finally:
        engine.dispose()


def test_kill_during_reembedding_then_rerun_gives_the_same_vectors(nights, tmp_path):
    root = _copy(nights, tmp_path)
    db = Paths.at(root).database
    args = ["--date", DAY2.isoformat(), "--root", str(root), "--config", str(TINY), "--only", ",".join(STAGES)]
    night = subprocess.Popen([sys.executable, str(REPO / "sleep.py"), *args], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _shard_written(db):
            assert night.poll() is None, "the night ended before it could be killed"
            assert time.monotonic() < deadline, "re-embedding never wrote a shard"
            time.sleep(0.005)
        os.killpg(night.pid, signal.SIGKILL)
        night.wait(timeout=30)
    finally:
        if night.poll() is None:
            os.killpg(night.pid, signal.SIGKILL)

    paths = Paths.at(root)
    engine = open_database(paths.database)
    try:
        for space in SPACES:  # night 1's version until night 2's covers both days: never a half-built one
            active = active_version(engine, space)
            assert active == _version(space, DAY1) or coverage(engine, space, active)["complete"], (space, active)
        assert not all(coverage(engine, s, _version(s, DAY2))["complete"] for s in SPACES), "killed too late"
    finally:
        engine.dispose()
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT status FROM stage_runs WHERE date = ? AND stage = 'reembed'",
                           (DAY2.isoformat(),)).fetchone()[0] == "running"  # the kill landed mid-stage

    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    resumed, reference = _vectors(root), _vectors(nights["root"])
    for space in SPACES:
        (rows, vectors), (want_rows, want) = resumed[space], reference[space]
        assert rows == want_rows and len(rows) > 0, space
        assert vectors.tobytes() == want.tobytes(), space
    engine = open_database(paths.database)
    try:
        assert all(active_version(engine, s) == _version(s, DAY2) for s in SPACES)
    finally:
        engine.dispose()


def test_forgetting_a_day_takes_its_reembed_records(nights, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(nights["root"], root)
    api.forget(root, DAY1)
    engine = open_database(Paths.at(root).database)
    try:
        for space in SPACES:
            cov = coverage(engine, space, _version(space, DAY2))
            assert (cov["days"], cov["days_total"], cov["missing_clips"]) == (1, 1, 0), cov
            assert active_version(engine, space) == _version(space, DAY2)
    finally:
        engine.dispose()
    with sqlite3.connect(Paths.at(root).database) as con:
        assert con.execute("SELECT count(*) FROM reembedded_days").fetchone()[0] == 0


def test_retention_keeps_the_checkpoints_of_the_versions_queries_read(nights, tmp_path):
    """Night 1's versions are still active in the snapshot: their checkpoints must outlive checkpoint_days."""
    import logging

    from memory import make_sessionmaker
    from stages import Night
    from stages.retention import run as retention

    root = _copy(nights, tmp_path)
    paths = Paths.at(root)
    engine = open_database(paths.database)
    later = DAY2 + dt.timedelta(days=30)
    cfg = load_config(TINY, ["memory.retention.checkpoint_days=1"])
    try:
        retention(Night(later, cfg, paths, engine, make_sessionmaker(engine), "cpu", logging.getLogger("test")))
    finally:
        engine.dispose()
    for model in ("jepa", "cpc", "align", "sae"):
        assert (paths.checkpoints / model / f"{DAY1.isoformat()}.pt").is_file(), model  # active: kept
        assert (paths.checkpoints / model / f"{DAY2.isoformat()}.pt").is_file(), model  # newest: kept


def test_night_ones_versions_are_dropped_once_night_two_holds_every_clip(nights, tmp_path):
    """Queries still answer from night 2's versions; night 1's shards, versions and (after
    checkpoint_days) checkpoints are gone."""
    import logging

    from memory import make_sessionmaker
    from stages import Night
    from stages.retention import run as retention

    root = nights["root"]
    paths = Paths.at(root)
    spaces = json.loads((paths.report(DAY2) / "summary.json").read_text())["reembed"]["spaces"]
    for space in SPACES:
        assert spaces[space]["dropped"] == [_version(space, DAY1)] and not spaces[space]["kept_superseded"], space
        assert not (paths.embeddings / space / _version(space, DAY1)).exists(), space
    assert {r["version"] for r in api.versions(root)} == {_version(s, DAY2) for s in SPACES}
    assert api.doctor(root)["problems"] == []
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    engine = open_database(Paths.at(copy).database)
    cfg = load_config(TINY, ["memory.retention.checkpoint_days=1"])
    try:
        retention(Night(DAY2 + dt.timedelta(days=30), cfg, Paths.at(copy), engine, make_sessionmaker(engine),
                        "cpu", logging.getLogger("test")))
    finally:
        engine.dispose()
    for model in ("jepa", "cpc", "align", "sae"):  # a dropped version's checkpoint is not protected
        assert not (Paths.at(copy).checkpoints / model / f"{DAY1.isoformat()}.pt").exists(), model
