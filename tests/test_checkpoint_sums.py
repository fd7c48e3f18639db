"""Checkpoint checksums in the catalog (issue #18): a night records them after each stage,
``doctor`` reads each file against them (``torch.load`` reads a flipped byte silently), and
``--repair`` moves a damaged checkpoint aside and points its model back a night."""
from __future__ import annotations

import datetime as dt

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import SleepConfig
from core.paths import Paths
from memory import integrity
from memory.checkpoints import CheckpointSum, record_checkpoints
from memory.db import open_database
from memory.doctor import doctor
from models.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from pipeline.runner import run_night
from stages import Stage

DAY1, DAY2 = dt.date(2026, 1, 14), dt.date(2026, 1, 15)


def train(night) -> dict:
    """A stage that trains nothing but writes its night's checkpoint, as the trainers do."""
    save_checkpoint(night.paths.checkpoints / "toy", night.date,
                    {"model": {"w": torch.full((300, 1000), float(night.date.day))}, "step": night.date.day})
    return {}


STAGES = [Stage("train", f"{__name__}:train", ("ingest",), model="toy")]


def _rows(paths: Paths) -> dict[str, CheckpointSum]:
    engine = open_database(paths.database)
    with Session(engine) as session:
        rows = {r.path: r for r in session.scalars(select(CheckpointSum))}
    engine.dispose()
    return rows


def _night(paths: Paths, date: dt.date, **kwargs):
    paths.raw(date).mkdir(parents=True, exist_ok=True)
    return run_night(date, SleepConfig(), paths, stages=STAGES, device="cpu", **kwargs)


def test_a_night_records_its_checkpoints_and_doctor_finds_a_flipped_byte(root):
    paths = Paths.at(root)
    _night(paths, DAY1)
    _night(paths, DAY2)
    rows = _rows(paths)
    assert sorted(rows) == ["checkpoints/toy/2026-01-14.pt", "checkpoints/toy/2026-01-15.pt"]
    newest = paths.root / "checkpoints/toy/2026-01-15.pt"
    assert rows["checkpoints/toy/2026-01-15.pt"].block_sums == integrity.file_sums(newest)
    assert doctor(paths)["problems"] == []

    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x01
    newest.write_bytes(bytes(data))
    load_checkpoint(newest)  # torch reads it without a word: only the sums tell
    assert doctor(paths)["problems"] == []  # read once already: a full read finds it
    problems = doctor(paths, read_data=True)["problems"]
    assert len(problems) == 1 and problems[0].startswith(
        "checkpoint checkpoints/toy/2026-01-15.pt: file damaged: block ")
    report = doctor(paths, repair=True, read_data=True)
    assert report["ok"] and "memory/quarantine" in report["repaired"][0]
    assert (paths.root / "memory/quarantine/checkpoints/toy/2026-01-15.pt").exists()
    assert latest_checkpoint(paths.checkpoints / "toy").name == "2026-01-14.pt"  # a night back
    assert doctor(paths, read_data=True)["problems"] == []

    # Running the night again writes and records it anew.
    _night(paths, DAY2, force=True)
    assert "checkpoints/toy/2026-01-15.pt" in _rows(paths) and doctor(paths, read_data=True)["problems"] == []


def test_a_missing_and_an_unrecorded_checkpoint(root):
    paths = Paths.at(root)
    _night(paths, DAY1)
    (paths.root / "checkpoints/toy/2026-01-14.pt").unlink()
    save_checkpoint(paths.checkpoints / "toy", DAY2, {"step": 2})  # written outside a night
    report = doctor(paths)
    assert report["problems"] == ["checkpoint checkpoints/toy/2026-01-14.pt: file missing"]
    assert "1 checkpoint(s) have no checksum yet (first: checkpoints/toy/2026-01-15.pt)" in report["notes"][0]
    assert doctor(paths, repair=True)["ok"]
    assert sorted(_rows(paths)) == ["checkpoints/toy/2026-01-15.pt"]
    report = doctor(paths)
    assert report["problems"] == [] and report["notes"] == []


def test_recording_skips_unchanged_files_and_redoes_rewritten_ones(root):
    paths = Paths.at(root)
    engine = open_database(paths.database)
    save_checkpoint(paths.checkpoints / "toy", DAY1, {"step": 1})
    with Session(engine) as session, session.begin():
        assert record_checkpoints(session, paths) == ["checkpoints/toy/2026-01-14.pt"]
    with Session(engine) as session, session.begin():
        assert record_checkpoints(session, paths) == []
    save_checkpoint(paths.checkpoints / "toy", DAY1, {"step": 1, "more": torch.ones(10)})
    with Session(engine) as session, session.begin():
        assert record_checkpoints(session, paths) == ["checkpoints/toy/2026-01-14.pt"]
    engine.dispose()
