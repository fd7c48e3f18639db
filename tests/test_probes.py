"""Stage probes: a probe set cut on night 1, kept, and measured against the whole memory every night.

Two nights of real FFmpeg media through :func:`pipeline.runner.run_night` with
``configs/tiny.yaml``, distinct scenes and tones per day (as in ``test_reembed.py``).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from two_days import DAY1, DAY2, record_day

import api
from core.config import CONFIG_DIR, load_config
from core.paths import Paths
from pipeline.runner import run_night

STAGES = ["ingest", "keep", "vision", "audio", "align", "sae", "reembed", "probes"]
TINY = CONFIG_DIR / "tiny.yaml"




def _files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _summary(root: Path, date: dt.date) -> dict:
    return json.loads((Paths.at(root).report(date) / "summary.json").read_text())


@pytest.fixture(scope="module")
def nights(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("probes") / "root"
    paths = Paths.at(root)
    record_day(root, DAY1)
    first = run_night(DAY1, load_config(TINY), paths, only=STAGES)
    assert first.ok, first.errors
    after_first, first_summary = _files(paths.memory / "probes"), _summary(root, DAY1)
    again = run_night(DAY1, load_config(TINY), paths, only=["probes"], force=True)
    assert again.ok, again.errors
    after_rerun = _files(paths.memory / "probes")
    record_day(root, DAY2)
    # First with no time to re-embed (day 1 is reached through the map), then with the normal
    # budget; probes' own config did not change, so it is forced to measure again.
    starved = run_night(DAY2, load_config(TINY, ["memory.reembed.max_minutes=0"]), paths, only=STAGES)
    assert starved.ok, starved.errors
    starved_summary = _summary(root, DAY2)
    second = run_night(DAY2, load_config(TINY), paths, only=STAGES)
    assert second.ok, second.errors
    measured = run_night(DAY2, load_config(TINY), paths, only=["probes"], force=True)
    assert measured.ok, measured.errors
    return {"root": root, "after_first": after_first, "after_rerun": after_rerun, "first_summary": first_summary,
            "starved_summary": starved_summary}


def _manifest(root: Path) -> dict:
    return json.loads((Paths.at(root).memory / "probes" / "manifest.json").read_text())


def test_night_one_cuts_a_probe_set_of_its_own_clips(nights):
    root = nights["root"]
    manifest = _manifest(root)
    probes = manifest["probes"]
    assert manifest["date"] == DAY1.isoformat() and len(probes) == 8  # 2 recordings x 4 clips of 3 s
    folder = Paths.at(root).memory / "probes"
    for p in probes:
        assert p["date"] == DAY1.isoformat() and p["source"].endswith(".mp4")
        assert (folder / p["photo"]).stat().st_size > 0 and (folder / p["sound"]).stat().st_size > 0
    assert folder.stat().st_mode & 0o077 == 0 and all(f.stat().st_mode & 0o077 == 0 for f in folder.iterdir())
    with sqlite3.connect(Paths.at(root).database) as con:
        day1 = {row[0] for row in con.execute("SELECT id FROM clips WHERE date = ?", (DAY1.isoformat(),))}
    assert {p["clip_id"] for p in probes} == day1
    assert nights["first_summary"]["probes"]["cut_tonight"] is True


def test_no_probe_is_a_stored_frame(nights):
    root = nights["root"]
    stored = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (root / "data").rglob("*") if p.is_file()}
    stored |= {hashlib.sha256(p.read_bytes()).hexdigest() for p in (Paths.at(root).memory / "keep").rglob("*")
               if p.is_file()}
    assert not set(nights["after_first"].values()) & stored


def test_a_rerun_does_not_cut_again(nights):
    assert nights["after_rerun"] == nights["after_first"]


def test_night_two_keeps_the_set_and_measures_it(nights):
    root = nights["root"]
    assert _files(Paths.at(root).memory / "probes") == nights["after_first"]
    for date in (DAY1, DAY2):
        summary = _summary(root, date)
        result, metrics = summary["probes"], summary["metrics"]["probes"]
        assert result["date"] == DAY1.isoformat() and result["cut_tonight"] is False  # the rerun cut nothing
        for prefix in ("image", "sound"):
            assert 0 <= metrics[f"{prefix}_recall@1"] <= 1 and 0 < metrics[f"{prefix}_chance"] <= 1, metrics
    assert _summary(root, DAY1)["metrics"]["probes"]["image_chance"] == pytest.approx(1 / 8, abs=1e-3)
    assert _summary(root, DAY2)["metrics"]["probes"]["image_chance"] == pytest.approx(1 / 16, abs=1e-3)
    searched = _summary(root, DAY2)["probes"]["spaces"]["vision"]["searched"]
    assert searched == ["jepa@2026-01-16"]  # re-embedding finished: the newest version holds both days


def test_unfinished_re_embedding_reaches_day_one_through_the_map(nights):
    result, metrics = nights["starved_summary"]["probes"], nights["starved_summary"]["metrics"]["probes"]
    assert result["spaces"]["vision"]["searched"] == ["jepa@2026-01-15", "jepa@2026-01-16"]
    assert result["spaces"]["audio"]["searched"] == ["cpc@2026-01-15", "cpc@2026-01-16"]
    assert 0 <= metrics["image_recall@1"] <= 1 and 0 <= metrics["sound_recall@1"] <= 1, metrics


def test_image_recall_on_night_one_is_above_chance(nights):
    metrics = _summary(nights["root"], DAY1)["metrics"]["probes"]
    assert metrics["image_recall@1"] > metrics["image_chance"], metrics


def test_report_shows_both_nights(nights):
    page = (Paths.at(nights["root"]).report(DAY2) / "index.html").read_text()
    assert "could not be drawn" not in page
    assert f"recall@1 of the probe set of {DAY1.isoformat()}, night by night</text>" in page  # the chart
    assert f"<td>{DAY1.isoformat()}</td>" in page and f"<td>{DAY2.isoformat()}</td>" in page  # the table


def test_forgetting_the_probe_day_removes_the_set(nights, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(nights["root"], root)
    plan = api.forget(root, DAY1)
    assert "memory/probes" in plan["files"]
    assert not (Paths.at(root).memory / "probes").exists()
