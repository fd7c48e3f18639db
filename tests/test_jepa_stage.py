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
    assert first["metrics"]["distill_loss"] == {"weight": 1.0, "off": "first night: no earlier model to distill from"}
    assert first["replay"]["days"] == []
    second = run(_night(DAY2, cfg, paths, engine))
    assert second["resumed_from"] == DAY1.isoformat() and second["replay_frames"] > 0
    assert second["replay"]["per_day"] == {DAY1.isoformat(): second["replay_frames"]}
    distill = second["metrics"]["distill_loss"]
    assert distill["weight"] == 1.0 and len(distill["curve"]) == 8 and 0 <= distill["final"] <= 4
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


def test_replay_takes_every_earlier_day_and_keepsakes_where_frames_are_gone(root, tiny_cfg):
    """Day A keeps its frames but one file is lost; day B's frames were removed by retention
    and only its clips' keepsake keyframes are left: both days are replayed."""
    from memory.keepsakes import Keepsake, keyframe_name, save_keepsakes, write_keep_file
    from memory.schema import Frame
    from stages.common import replay_frame_files

    day_a, day_b = dt.date(2026, 1, 13), dt.date(2026, 1, 14)
    paths = Paths.at(root)
    engine = open_database(paths.database)
    Session = make_sessionmaker(engine)
    made = {}
    for date, scenes in ((day_a, SCENES[:2]), (day_b, SCENES[2:4])):
        made[date] = insert_day(Session, root, date, make_scene_frames(paths.frames(date), scenes=scenes, seconds=2))
    with Session() as session:
        frames_b = {c: [root / session.get(Frame, f).path for f in ids] for c, ids in made[day_b].items()}
        lost = root / session.get(Frame, made[day_a][next(iter(made[day_a]))][0]).path
    keep = [Keepsake(c, day_b.isoformat(), write_keep_file(paths, day_b.isoformat(), keyframe_name(c),
                                                           files[0].read_bytes()), None)
            for c, files in frames_b.items()]
    save_keepsakes(engine, paths, day_b.isoformat(), keep)
    with Session() as session:  # what retention does to day B
        for ids in made[day_b].values():
            for frame_id in ids:
                session.delete(session.get(Frame, frame_id))
        session.commit()
    lost.unlink()

    night = _night(DAY2, tiny_cfg, paths, engine)
    files, days, counts = replay_frame_files(night, 100, seed=0)
    frames_a = sum(len(v) for v in made[day_a].values())
    assert days.count(day_a.isoformat()) == frames_a - 1 and days.count(day_b.isoformat()) == len(keep)
    assert sorted(f for f, d in zip(files, days) if d == day_b.isoformat()) == sorted(k.keyframe for k in keep)
    assert counts == {"pool": frames_a + len(keep), "from_keepsakes": len(keep), "missing": 1}
    assert all((root / f).is_file() for f in files)
    assert replay_frame_files(night, 100, seed=0) == (files, days, counts)  # the same draw again
    _, few_days, _ = replay_frame_files(night, 4, seed=0)
    assert few_days.count(day_b.isoformat()) == 2  # an equal share, although day A has more frames
