"""What the stages share (stages/common.py): the resume policy, the held-out split, the night's
seed, version names, and the registry of who writes what (stages/__init__.py)."""
from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pytest
import torch

from core.paths import Paths
from models.checkpoint import CheckpointError, save_checkpoint
from stages import Night, stage, writer_of
from stages.common import (
    heldout_mask,
    heldout_positions,
    is_heldout,
    model_of,
    model_version,
    night_seed,
    resume_state,
    tonight_version,
    train_and_measure,
)

DAY1, DAY2 = dt.date(2026, 1, 15), dt.date(2026, 1, 16)
REQUIRED = ("model", "step", "config")


def _night(root, cfg, date: dt.date, engine=None) -> Night:
    from memory.db import make_sessionmaker

    return Night(date, cfg, Paths.at(root), engine, make_sessionmaker(engine) if engine else None, "cpu",
                 logging.getLogger("test"))


def _save(root, date: dt.date, *, latents: int = 16, n_inputs: int = 8, channels=(16, 32)) -> None:
    save_checkpoint(Paths.at(root).checkpoints / "sae", date, {
        "model": {"w": torch.zeros(2)}, "step": 5, "n_inputs": n_inputs,
        "config": {"latents": latents, "channels": list(channels)}})


# --- the resume policy -----------------------------------------------------------------------

def test_the_first_night_starts_from_scratch(root, tiny_cfg):
    resume = resume_state(_night(root, tiny_cfg, DAY1), "sae", {"n_inputs": 8}, REQUIRED)
    assert (resume.checkpoint, resume.resumed_from, resume.restart_reason) == (None, None, None)


def test_the_same_architecture_continues_last_nights_checkpoint(root, tiny_cfg):
    _save(root, DAY1)
    resume = resume_state(_night(root, tiny_cfg, DAY2), "sae", {"n_inputs": 8, "latents": 16}, REQUIRED)
    assert resume.checkpoint["step"] == 5
    assert resume.as_result() == {"resumed_from": "2026-01-15", "restart_reason": None}


def test_a_rerun_continues_the_checkpoint_before_its_own_date(root, tiny_cfg):
    _save(root, DAY1)
    _save(root, DAY2, latents=99)  # tonight's own, from a first run of this night
    resume = resume_state(_night(root, tiny_cfg, DAY2), "sae", {"n_inputs": 8, "latents": 16}, REQUIRED)
    assert resume.resumed_from == "2026-01-15" and resume.restart_reason is None


def test_a_changed_shape_restarts_with_a_logged_reason(root, tiny_cfg, caplog):
    _save(root, DAY1)
    with caplog.at_level(logging.WARNING, logger="stages.common"):
        resume = resume_state(_night(root, tiny_cfg, DAY2), "sae", {"n_inputs": 8, "latents": 32}, REQUIRED)
    assert resume.checkpoint is None and resume.resumed_from is None
    assert "2026-01-15.pt" in resume.restart_reason and "latents 16 -> 32" in resume.restart_reason
    assert "n_inputs" not in resume.restart_reason  # only what changed is named
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert resume.restart_reason in caplog.records[0].getMessage()


def test_lists_and_tuples_of_the_same_sizes_are_the_same_shape(root, tiny_cfg):
    _save(root, DAY1, channels=(16, 32))  # saved as a list (a mode="json" dump)
    resume = resume_state(_night(root, tiny_cfg, DAY2), "sae", {"channels": (16, 32)}, REQUIRED)
    assert resume.resumed_from == "2026-01-15"


def test_a_damaged_checkpoint_is_an_error_not_a_restart(root, tiny_cfg):
    _save(root, DAY1)
    path = Paths.at(root).checkpoints / "sae" / f"{DAY1}.pt"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cannot read"):
        resume_state(_night(root, tiny_cfg, DAY2), "sae", {"n_inputs": 8}, REQUIRED)


def test_a_checkpoint_lacking_what_tonight_needs_is_an_error(root, tiny_cfg):
    _save(root, DAY1)
    with pytest.raises(CheckpointError, match="optimizer"):
        resume_state(_night(root, tiny_cfg, DAY2), "sae", {"n_inputs": 8}, (*REQUIRED, "optimizer"))
    with pytest.raises(CheckpointError, match="does not record hidden"):
        resume_state(_night(root, tiny_cfg, DAY2), "sae", {"hidden": 8}, REQUIRED)


def test_a_setting_added_later_takes_its_default_for_older_checkpoints(root, tiny_cfg):
    _save(root, DAY1)  # written before models.sae.kind existed: a TopK dictionary
    arch = {"n_inputs": 8, "latents": 16}
    older = resume_state(_night(root, tiny_cfg, DAY2), "sae", {**arch, "kind": "topk"}, REQUIRED,
                         defaults={"kind": "topk"})
    assert older.resumed_from == "2026-01-15"
    other = resume_state(_night(root, tiny_cfg, DAY2), "sae", {**arch, "kind": "batchtopk"}, REQUIRED,
                         defaults={"kind": "topk"})
    assert other.checkpoint is None and "kind topk -> batchtopk" in other.restart_reason


def test_a_restart_reaches_the_stage_result_and_the_report(root, tiny_cfg):
    """Stage ``sae`` on twelve clips two nights running; the second night doubles the latents."""
    from memory.db import open_database
    from memory.schema import Clip, Source
    from memory.store import EmbeddingRow, write_embeddings
    from report.build import ReportContext, render_sections
    from stages import sae as sae_stage

    engine = open_database(Paths.at(root).database)
    rng = np.random.default_rng(0)
    cfg = tiny_cfg.model_copy(update={"models": tiny_cfg.models.model_copy(update={
        "sae": tiny_cfg.models.sae.model_copy(update={"min_steps": 3, "max_steps": 3})})})
    wider = cfg.model_copy(update={"models": cfg.models.model_copy(update={
        "sae": cfg.models.sae.model_copy(update={"latents": 2 * cfg.models.sae.latents})})})
    results = {}
    for date, night_cfg in ((DAY1, cfg), (DAY2, wider)):
        night = _night(root, night_cfg, date, engine)
        with night.Session() as session:
            source = Source(date=night.day, path=f"data/raw/{night.day}/a.mp4", content_hash=night.day,
                            size_bytes=1, has_video=True, has_audio=False)
            session.add(source)
            session.flush()
            clips = [Clip(source_id=source.id, date=night.day, index=j, start_s=3.0 * j, end_s=3.0 * j + 3)
                     for j in range(12)]
            session.add_all(clips)
            session.commit()
            ids = [c.id for c in clips]
        version = model_version("align", date)
        write_embeddings(engine, night.paths, space="shared", model_version=version, date=night.day,
                         rows=[EmbeddingRow(c, "vision") for c in ids],
                         vectors=rng.normal(size=(len(ids), 16)).astype(np.float32))
        night.results["align"] = {"model_version": version}
        results[date] = sae_stage.run(night)

    assert results[DAY1]["restart_reason"] is None and results[DAY1]["resumed_from"] is None
    reason = results[DAY2]["restart_reason"]
    assert results[DAY2]["trained"] and results[DAY2]["resumed_from"] is None
    assert f"latents {cfg.models.sae.latents} -> {2 * cfg.models.sae.latents}" in reason

    summary = {"date": DAY2.isoformat(), "metrics": {},
               "stages": {"sae": {"status": "done", "seconds": 1.0, "error": None}},
               "sae": {k: v for k, v in results[DAY2].items() if k != "metrics"}}
    sections = render_sections(summary, ReportContext(DAY2, wider, Paths.at(root)), [stage("sae")])
    timings = next(s for s in sections if s.key == "timings")
    assert "sae started afresh" in timings.html and "latents" in timings.html


# --- held-out split, seeds, versions ---------------------------------------------------------

def test_the_heldout_split_is_stable_per_clip():
    # Pinned: tests elsewhere are calibrated on exactly these clips being held out.
    assert [k for k in range(40) if is_heldout(k, 0.25, 0)] == [3, 7, 8, 9, 11, 12, 18, 22, 23, 24, 25, 26,
                                                                 29, 31, 32, 37]
    # A clip is held out or not whatever other clips a stage sees with it.
    everything = heldout_mask(range(40), 0.25, 0)
    assert heldout_mask([31, 2, 7], 0.25, 0).tolist() == everything[[31, 2, 7]].tolist()


def test_the_vision_split_draws_positions_and_keeps_one_to_train_on():
    assert heldout_positions(20, 0.25, 0).tolist() == [2, 3, 10, 13, 17]
    assert heldout_positions(4, 0.01, 0).tolist() == [3]  # at least one held out from four
    assert heldout_positions(2, 0.9, 0).tolist() == [1]  # never all of them
    assert heldout_positions(3, 0.0, 0).tolist() == []


def test_too_few_rows_on_either_side_falls_back():
    held = np.array([True, False, False, False])
    train, measured = train_and_measure(held)
    assert train.tolist() == [False, True, True, True] and measured.tolist() == train.tolist()
    train, measured = train_and_measure(np.array([True, True, True, False]))
    assert train.all() and measured.tolist() == [True, True, True, False]


def test_night_seed_is_the_runtime_seed_and_the_date(root, tiny_cfg):
    assert night_seed(_night(root, tiny_cfg, DAY1)) == 0 * 1_000_003 + 739631
    seeded = tiny_cfg.model_copy(update={"runtime": tiny_cfg.runtime.model_copy(update={"seed": 2})})
    assert night_seed(_night(root, seeded, DAY1)) == 2 * 1_000_003 + 739631


def test_the_registry_names_models_spaces_and_versions(root, tiny_cfg):
    assert model_of("vision") == "jepa" and model_of("audio") == "cpc"
    assert writer_of("vision_frame").name == "vision" and writer_of("shared").name == "align"
    assert model_version("jepa", DAY1) == model_version("jepa", "2026-01-15") == "jepa@2026-01-15"
    night = _night(root, tiny_cfg, DAY1)
    assert tonight_version(night, "audio") == "cpc@2026-01-15"
    night.results["audio"] = {"model_version": "cpc@2026-01-14"}
    assert tonight_version(night, "audio") == "cpc@2026-01-14"
    with pytest.raises(KeyError):
        model_of("openclip")  # versioned by its weights file, not night by night
