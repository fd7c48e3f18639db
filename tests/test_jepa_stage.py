"""The ``vision`` stage end to end on two nights of lavfi frames (needs memory.store)."""
from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pytest
from jepa_media import SCENES, insert_day, make_scene_frames

from core.paths import Paths
from memory import store
from memory.db import make_sessionmaker, open_database
from stages import Night

DAY1, DAY2 = dt.date(2026, 1, 15), dt.date(2026, 1, 16)


def _night(date, cfg, paths, engine):
    return Night(date, cfg, paths, engine, make_sessionmaker(engine), "cpu", logging.getLogger("test"))


def test_two_nights_train_resume_and_fill_the_vision_spaces(root, tiny_cfg):
    from stages.vision import encode_image_file, run

    cfg = tiny_cfg.model_copy(update={"models": tiny_cfg.models.model_copy(update={
        "jepa": tiny_cfg.models.jepa.model_copy(update={"steps": 8, "warmup_steps": 2})})})
    paths = Paths.at(root)
    engine = open_database(paths.database)
    Session = make_sessionmaker(engine)
    made = {}
    for date, scenes in ((DAY1, SCENES[:4]), (DAY2, SCENES[4:])):
        frames = make_scene_frames(paths.frames(date), scenes=scenes, seconds=3)
        made[date] = insert_day(Session, root, date, frames)

    first = run(_night(DAY1, cfg, paths, engine))
    assert first["resumed_from"] is None and first["embedded"] == sum(len(v) for v in made[DAY1].values())
    second = run(_night(DAY2, cfg, paths, engine))
    assert second["resumed_from"] == DAY1.isoformat() and second["replay_frames"] > 0
    assert second["model_version"] == "jepa@2026-01-16"
    m = second["metrics"]
    assert len(m["loss_curve"]) == 8 and m["effective_rank"] > 0
    assert 0 <= m["same_source_retrieval"] <= 1 and 0 <= m["same_source_retrieval_random"] <= 1

    assert store.latest_version(engine, "vision") == "jepa@2026-01-16"
    # image search: a frame of the second night finds its own clip first
    clip_id, frame_ids = next(iter(made[DAY2].items()))
    with Session() as session:
        from memory.schema import Frame
        frame_path = root / session.get(Frame, frame_ids[1]).path
    version, vector = encode_image_file(frame_path, cfg, paths, "cpu")
    assert version == "jepa@2026-01-16" and vector.shape == (cfg.models.jepa.dim,)
    hits = store.search(engine, paths, space="vision_frame", query=vector, topk=3)
    assert hits[0].clip_id == clip_id and hits[0].score == pytest.approx(1.0, abs=1e-3)
    clip_hits = store.search(engine, paths, space="vision", query=vector, topk=len(made[DAY2]))
    assert {h.clip_id for h in clip_hits} == set(made[DAY2])
    assert np.isfinite([h.score for h in clip_hits]).all()

    again = run(_night(DAY2, cfg, paths, engine))  # safe to run twice: same start, same result
    assert again["resumed_from"] == DAY1.isoformat() and again["metrics"]["loss_curve"] == m["loss_curve"]
