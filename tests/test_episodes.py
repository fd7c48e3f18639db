"""Episodes and highlights: change points, MMR, the planted-scene day, forget, and queries."""
from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess

import numpy as np
import pytest
from memfill import fill

from api import query
from core.config import CONFIG_DIR, load_config
from core.paths import Paths
from ingest.binaries import ffmpeg_path
from memory import (
    NewEpisode,
    NewHighlight,
    day_episodes,
    day_highlights,
    episode_of,
    save_episodes,
)
from memory.db import open_database
from memory.forget import forget_day
from models import episodes as ep
from pipeline.runner import run_night
from stages import stage

TINY = CONFIG_DIR / "tiny.yaml"
DAY = dt.date(2026, 3, 2)
# Three planted scenes in sequence, each its own picture and tone.
SCENES = (("testsrc2", 330), ("mandelbrot", 550), ("smptebars", 880))
CLIPS_PER_SCENE = 3  # of ingest.clip_seconds = 3 s


# -- pure functions ------------------------------------------------------------------------

def test_change_points_find_three_planted_segments_exactly():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    lengths = (5, 7, 4)
    x = np.vstack([c + 0.3 * rng.normal(size=(n, 16)) for c, n in zip(centres, lengths)])
    for kernel in ep.KERNELS:
        assert ep.change_points(x, kernel=kernel, penalty=1.0) == [5, 12, 16]


def test_change_points_of_fewer_than_two_clips():
    assert ep.change_points(np.zeros((0, 4))) == []
    assert ep.change_points(np.ones((1, 4))) == [1]


def test_mmr_skips_a_near_duplicate_of_a_pick():
    scores = [1.0, 0.99, 0.98, 0.5, 0.4]
    vectors = np.array([[1, 0], [1, 0.01], [1, 0.02], [0, 1], [0.7, 0.7]], float)
    assert ep.mmr(scores, vectors, 2, lam=1.0) == [0, 1]  # by score alone: the duplicate
    assert ep.mmr(scores, vectors, 2, lam=0.5) == [0, 3]  # diverse: the other direction


def test_reason_leads_with_the_strongest_component():
    components = {"prediction": np.array([0.2, 2.5]), "novelty": np.array([1.8, 0.1]),
                  "loudness": np.array([0.0, 0.4])}
    loudness = [-30.0, -10.0]
    assert ep.reasons(0, components, loudness) == ["unlike any earlier day", "quietest moment"]
    assert ep.reasons(1, components, loudness) == ["the models did not see it coming", "loudest moment"]


# -- a day of three planted scenes ---------------------------------------------------------

def make_planted_day(raw, seconds_per_scene: float) -> None:
    """One recording: the :data:`SCENES` in sequence (FFmpeg concat of lavfi sources)."""
    raw.mkdir(parents=True, exist_ok=True)
    cmd, parts = [ffmpeg_path(), "-v", "error", "-y"], []
    for i, (source, tone) in enumerate(SCENES):
        cmd += ["-f", "lavfi", "-t", str(seconds_per_scene), "-i", f"{source}=size=160x96:rate=10,format=yuv420p",
                "-f", "lavfi", "-t", str(seconds_per_scene), "-i", f"sine=frequency={tone}:sample_rate=16000"]
        parts.append(f"[{2 * i}:v][{2 * i + 1}:a]")
    cmd += ["-filter_complex", "".join(parts) + f"concat=n={len(SCENES)}:v=1:a=1[v][a]", "-map", "[v]",
            "-map", "[a]", "-c:v", "libx264", "-preset", "ultrafast", "-g", "10", "-c:a", "aac",
            str(raw / "2026-03-02_0900_day.mp4")]
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The night of the planted day, through ingest, vision, audio and episodes only (episodes
    needs reembed in the full list; on a first night that has nothing to move)."""
    root = tmp_path_factory.mktemp("planted")
    paths = Paths.at(root)
    cfg = load_config(TINY)
    make_planted_day(paths.raw(DAY), CLIPS_PER_SCENE * cfg.ingest.clip_seconds)
    stages = [stage("ingest"), stage("vision"), stage("audio"),
              dataclasses.replace(stage("episodes"), needs=("vision", "audio"))]
    outcome = run_night(DAY, cfg, paths, stages=stages)
    assert not outcome.errors, outcome.errors
    engine = open_database(paths.database)
    yield paths, engine, outcome
    engine.dispose()


def test_planted_scene_boundaries_found_within_one_clip(planted):
    _paths, engine, _ = planted
    episodes = day_episodes(engine, DAY.isoformat())
    found = [sum(e["clips"] for e in episodes[:k]) for k in range(1, len(episodes))]
    wanted = [CLIPS_PER_SCENE * k for k in range(1, len(SCENES))]
    print(f"planted boundaries (clip positions) {wanted}, found {found}")
    assert len(found) == len(wanted)
    assert all(abs(f - w) <= 1 for f, w in zip(found, wanted))


def test_planted_day_has_diverse_highlights_with_reasons(planted):
    _paths, engine, _ = planted
    highlights = day_highlights(engine, DAY.isoformat())
    assert 3 <= len(highlights) <= 5
    assert all(h["reasons"] for h in highlights)
    first_night = [h["components"].get("novelty") for h in highlights]
    assert first_night == [None] * len(highlights)  # nothing earlier to compare with
    by_clip = episode_of(engine, [h["clip_id"] for h in highlights])
    assert len({by_clip[h["clip_id"]]["index"] for h in highlights}) >= 2  # not all from one episode


def test_planted_day_report_shows_the_timeline(planted):
    paths, _, _ = planted
    page = (paths.report(DAY) / "index.html").read_text()
    assert 'class="episodes-timeline"' in page
    assert "data:image/jpeg;base64," in page


def test_rerun_replaces_the_days_episodes(planted):
    paths, engine, _ = planted
    before = day_episodes(engine, DAY.isoformat())
    cfg = load_config(TINY)
    stages = [stage("ingest"), stage("vision"), stage("audio"),
              dataclasses.replace(stage("episodes"), needs=("vision", "audio"))]
    again = run_night(DAY, cfg, paths, stages=stages, only=["episodes"], force=True)
    assert not again.errors
    after = day_episodes(engine, DAY.isoformat())
    assert [(e["first_clip_id"], e["clips"]) for e in after] == [(e["first_clip_id"], e["clips"]) for e in before]


# -- memory: forget and queries ------------------------------------------------------------

DAYS = ["2026-01-10", "2026-01-11"]


@pytest.fixture
def filled(root):
    paths = Paths.at(root)
    engine = open_database(paths.database)
    days = fill(engine, paths, DAYS, n_clips=8)
    for day, (ids, _) in days.items():
        save_episodes(engine, day, [NewEpisode(tuple(ids[:5]), None, None, 0.0, 15.0, ("a.mp4",), (-20.0,) * 5),
                                    NewEpisode(tuple(ids[5:]), None, None, 15.0, 24.0, ("a.mp4",), (None,) * 3)],
                      [NewHighlight(ids[0], 2.5, ("loudest moment",), {"loudness": 2.5})])
    yield paths, engine, days
    engine.dispose()


def test_forget_removes_the_days_episodes(filled):
    paths, engine, _days = filled
    removed = forget_day(paths, dt.date.fromisoformat(DAYS[1]))
    assert (removed["database"]["episodes"], removed["database"]["episode_clips"],
            removed["database"]["highlights"]) == (2, 8, 1)
    assert day_episodes(engine, DAYS[1]) == [] and day_highlights(engine, DAYS[1]) == []
    assert len(day_episodes(engine, DAYS[0])) == 2


def test_saving_again_replaces_a_days_rows(filled):
    _paths, engine, days = filled
    ids = days[DAYS[0]][0]
    save_episodes(engine, DAYS[0], [NewEpisode(tuple(ids), None, None, 0.0, 24.0, ("a.mp4",), (None,) * 8)], [])
    assert [e["clips"] for e in day_episodes(engine, DAYS[0])] == [8]
    assert day_highlights(engine, DAYS[0]) == []


def test_query_hit_carries_its_episode(filled):
    paths, engine, days = filled
    ids = days[DAYS[0]][0]
    hits = query(paths.root, clip=ids[0], topk=16)
    assert hits and all(h.episode is not None for h in hits)
    for hit in hits:
        expected = episode_of(engine, [hit.clip_id])[hit.clip_id]
        assert hit.as_dict()["episode"] == expected
        assert hit.episode["date"] == hit.date
