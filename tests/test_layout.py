"""An image query's best hits scored again by layout (stages.layout, models.vision.embed.embed_layouts).

The model-level tests use a random tiny encoder; the rest run one tiny night of real FFmpeg
media (ingest, keep, vision) and query it with photos cut between the stored frames.
"""
from __future__ import annotations

import shutil
import sqlite3
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from two_days import DAY1, record_day

import api
from core.config import CONFIG_DIR, load_config
from core.paths import Paths
from ingest.binaries import ffmpeg_path
from memory import open_database
from models.vision.embed import embed_frames, embed_layouts, layout_scores
from models.vision.frames import decode_frames
from models.vision.jepa import build_encoder
from pipeline.runner import run_night
from stages.layout import LayoutRanker
from stages.vision import read_image

TINY = CONFIG_DIR / "tiny.yaml"


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return build_encoder(load_config(TINY).models.jepa).eval()


def _pictures(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_a_one_region_layout_is_the_unit_length_mean_vector(encoder):
    images = _pictures(5, encoder.img_size)
    means = embed_frames(encoder, images)
    layouts = embed_layouts(encoder, images, grid=1)
    assert layouts.shape == (5, 1, encoder.dim)
    np.testing.assert_allclose(layouts[:, 0], means / np.linalg.norm(means, axis=1, keepdims=True), atol=1e-5)


def test_layouts_have_unit_regions_and_score_a_picture_highest_against_itself(encoder):
    images = _pictures(3, encoder.img_size)
    mirrored = torch.flip(images, dims=[3])
    layouts = embed_layouts(encoder, torch.cat([images, mirrored]), grid=4, batch_size=2)
    assert layouts.shape == (6, 16, encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(layouts, axis=2), 1.0, atol=1e-5)
    for i in range(3):
        scores = layout_scores(layouts[i], layouts)
        assert scores[i] == pytest.approx(1.0, abs=1e-5)
        assert scores[i] > scores[3 + i]  # its mirror image holds the same things elsewhere
    assert embed_layouts(encoder, images[:0], grid=4).shape == (0, 16, encoder.dim)


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("layout") / "root"
    record_day(root, DAY1)
    outcome = run_night(DAY1, load_config(TINY), Paths.at(root), only=["ingest", "keep", "vision"])
    assert outcome.ok, outcome.errors
    return root


def _photo(root: Path, recording: str, at: float, out: Path) -> Path:
    """A frame between the stored ones (1 fps at whole seconds): never a stored file."""
    source = root / "data" / "raw" / DAY1.isoformat() / recording
    subprocess.run([ffmpeg_path(), "-v", "error", "-y", "-ss", str(at), "-i", str(source), "-frames:v", "1",
                    str(out)], check=True, capture_output=True)
    return out


def test_an_image_query_is_ordered_by_the_layout_of_each_hits_keyframe(night, tmp_path):
    photo = _photo(night, "VID_1.mp4", 4.5, tmp_path / "photo.png")
    hits = api.query(night, image=photo, config=TINY, topk=5)
    vector_hits = api.query(night, image=photo, config=TINY, topk=5, overrides=["memory.search.layout_rerank=0"])
    assert hits[0].source_path.endswith("VID_1.mp4") and hits[0].start_s == 3.0, hits[0]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # Each score is the layout of the photo against the hit's keyframe, by the newest encoder.
    cfg = load_config(TINY)
    paths = Paths.at(night)
    engine = open_database(paths.database)
    try:
        ranker = LayoutRanker(engine, paths, cfg, "cpu")
        query = ranker.layout(read_image(photo))
        with sqlite3.connect(paths.database) as db:
            kept = dict(db.execute("select clip_id, keyframe from keepsakes"))
        frames = decode_frames([night / kept[h.clip_id] for h in hits], ranker.encoder.img_size).images
        layouts = embed_layouts(ranker.encoder, frames, grid=cfg.memory.search.layout_grid)
        np.testing.assert_allclose([h.score for h in hits], layout_scores(query, layouts), atol=1e-5)
    finally:
        engine.dispose()
    assert [h.clip_id for h in hits] != [h.clip_id for h in vector_hits] or \
        [h.score for h in hits] != [h.score for h in vector_hits]  # scores are the layout's, not the vectors'


def test_the_order_does_not_depend_on_the_vector_order(night, tmp_path):
    """Given the vector search's hits in reverse, the layout still puts the photo's clip first."""
    photo = _photo(night, "VID_1.mp4", 7.5, tmp_path / "photo.png")  # mandelbrot: it zooms, each clip its own
    cfg = load_config(TINY)
    vector_hits = api.query(night, image=photo, config=TINY, topk=8, overrides=["memory.search.layout_rerank=0"])
    backwards = [replace(h, score=float(i)) for i, h in enumerate(vector_hits)]  # the right clip now scores lowest
    paths = Paths.at(night)
    engine = open_database(paths.database)
    try:
        ranked = LayoutRanker(engine, paths, cfg, "cpu").rerank(read_image(photo), backwards)
    finally:
        engine.dispose()
    assert ranked[0].source_path.endswith("VID_1.mp4") and ranked[0].start_s == 6.0, ranked[0]
    assert sorted(h.clip_id for h in ranked) == sorted(h.clip_id for h in vector_hits)
    assert all(-1.0 <= h.score <= 1.0 for h in ranked)


def test_a_hit_without_a_picture_keeps_its_vector_score(night, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(night, root)
    photo = _photo(root, "VID_0.mp4", 1.5, tmp_path / "photo.png")
    vector_hits = api.query(root, image=photo, config=TINY, topk=4, overrides=["memory.search.layout_rerank=0"])
    gone = vector_hits[-1]
    with sqlite3.connect(Paths.at(root).database) as db:
        pictures = [p for (p,) in db.execute("select keyframe from keepsakes where clip_id = ?", (gone.clip_id,))]
        pictures += [p for (p,) in db.execute("select path from frames where clip_id = ?", (gone.clip_id,))]
    for picture in pictures:
        (root / picture).unlink()
    hits = api.query(root, image=photo, config=TINY, topk=20)
    [kept] = [h for h in hits if h.clip_id == gone.clip_id]
    assert kept.score == pytest.approx(gone.score, abs=1e-6)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_a_query_records_the_use_of_the_days_it_returns(night, tmp_path):
    with sqlite3.connect(Paths.at(night).database) as db:
        before = dict(db.execute("select date, uses from day_uses"))
    api.query(night, image=_photo(night, "VID_0.mp4", 2.5, tmp_path / "photo.png"), config=TINY, topk=2)
    with sqlite3.connect(Paths.at(night).database) as db:
        after = dict(db.execute("select date, uses from day_uses"))
    assert after == {DAY1.isoformat(): before.get(DAY1.isoformat(), 0) + 1}


def test_layout_rerank_zero_is_the_vector_search(night, tmp_path):
    photo = _photo(night, "VID_1.mp4", 10.5, tmp_path / "photo.png")
    off = api.query(night, image=photo, config=TINY, topk=3, overrides=["memory.search.layout_rerank=0"])
    again = api.query(night, image=photo, config=TINY, topk=3, overrides=["memory.search.layout_rerank=0"])
    assert [(h.clip_id, h.score) for h in off] == [(h.clip_id, h.score) for h in again]
    # A clip query is not an image: its order is the vector search's whatever the setting.
    clip = off[0].clip_id
    assert ([h.clip_id for h in api.query(night, clip=clip, config=TINY, topk=3)] ==
            [h.clip_id for h in api.query(night, clip=clip, config=TINY, topk=3,
                                          overrides=["memory.search.layout_rerank=0"])])


def test_an_image_query_reads_the_vision_checkpoint_once_and_again_after_a_night_rewrites_it(
        night, tmp_path, monkeypatch):
    """The photo is embedded with the searched version and ordered by layout with the newest:
    one checkpoint here, read once per process while the file is unchanged."""
    import os

    import models.vision.embed as embed

    embed._remembered_encoder.cache_clear()
    loads = []
    real = embed.load_target_encoder
    monkeypatch.setattr(embed, "load_target_encoder", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    photo = _photo(night, "VID_1.mp4", 4.5, tmp_path / "photo.png")
    first = api.query(night, image=photo, config=TINY, topk=3)
    assert len(loads) == 1, loads
    api.query(night, image=photo, config=TINY, topk=3)
    assert len(loads) == 1, loads  # a second query in the same process reads nothing again
    checkpoint = Path(loads[0])
    stat = checkpoint.stat()
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a night wrote it again
    again = api.query(night, image=photo, config=TINY, topk=3)
    assert len(loads) == 2, loads
    assert [h.clip_id for h in again] == [h.clip_id for h in first]
