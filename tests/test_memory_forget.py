"""forget, retention and doctor; the query/forget/doctor commands end to end."""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
from conftest import run_cli
from memfill import DIM, fill
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from core.config import RetentionConfig
from core.errors import LockHeld
from core.lock import NightLock
from core.paths import Paths
from memory import ledger
from memory.catalog import Shard, ShardRow
from memory.db import open_database
from memory.doctor import doctor
from memory.forget import forget_day
from memory.retention import apply_retention
from memory.schema import AudioSegment, Clip, Frame, Source
from memory.search import clip_vector
from memory.store import search
from stages import STAGES

DAYS = ["2026-01-10", "2026-01-11", "2026-01-12"]


@pytest.fixture
def mem(root):
    paths = Paths.at(root)
    engine = open_database(paths.database)
    days = fill(engine, paths, DAYS, n_clips=20)
    with Session(engine) as s:
        for day in DAYS:
            ledger.mark_started(s, day, "ingest", "h")
    yield engine, paths, days
    engine.dispose()


def _counts(engine, day: str) -> dict:
    with Session(engine) as s:
        clips = select(Clip.id).where(Clip.date == day)
        return {
            "sources": s.scalar(select(func.count()).select_from(Source).where(Source.date == day)),
            "clips": s.scalar(select(func.count()).select_from(Clip).where(Clip.date == day)),
            "frames": s.scalar(select(func.count()).select_from(Frame).where(Frame.clip_id.in_(clips))),
            "audio": s.scalar(select(func.count()).select_from(AudioSegment)
                              .where(AudioSegment.clip_id.in_(clips))),
            "shard_rows": s.scalar(select(func.count()).select_from(ShardRow).join(Shard)
                                   .where(Shard.date == day)),
            "ledger": len(ledger.night(s, day)),
        }


def test_forget_removes_exactly_one_day(mem):
    engine, paths, days = mem
    day = dt.date(2026, 1, 11)
    paths.report(day).mkdir(parents=True)
    (paths.report(day) / "index.html").write_text("report")
    kept_before = {d: _counts(engine, d) for d in ("2026-01-10", "2026-01-12")}
    query = days["2026-01-10"][1][0]
    hits_before = [h for h in search(engine, paths, space="vision", query=query, topk=100)
                   if h.date != "2026-01-11"]
    removed = forget_day(paths, day)
    assert removed["database"] == {"sources": 1, "clips": 20, "frames": 60, "audio_segments": 20,
                                   "keepsakes": 0, "shards": 1, "shard_rows": 20, "stage_runs": 1,
                                   "journal_entries": 0, "journal_shards": 0, "journal_vectors": 0,
                                   "episodes": 0, "episode_clips": 0, "highlights": 0}
    assert _counts(engine, "2026-01-11") == dict.fromkeys(kept_before["2026-01-10"], 0)
    for folder in (paths.raw(day), paths.frames(day), paths.audio(day), paths.report(day)):
        assert not folder.exists()
    assert not list(paths.embeddings.rglob("2026-01-11-*.npy"))
    for d, counts in kept_before.items():
        assert _counts(engine, d) == counts
        assert paths.raw(dt.date.fromisoformat(d)).is_dir()
    hits_after = search(engine, paths, space="vision", query=query, topk=100)
    assert [h.clip_id for h in hits_after] == [h.clip_id for h in hits_before][:len(hits_after)]
    assert len(hits_after) == 40
    assert doctor(paths)["problems"] == []


def test_forget_waits_for_no_night(mem):
    _, paths, _ = mem
    with NightLock(paths.lock, "night 2026-01-12"):
        with pytest.raises(LockHeld):
            forget_day(paths, dt.date(2026, 1, 11))
    assert paths.raw(dt.date(2026, 1, 11)).is_dir()


def test_retention_drops_old_footage_and_keeps_memories(mem):
    engine, paths, days = mem
    result = apply_retention(engine, paths, RetentionConfig(raw_days=2, derived_days=1),
                             dt.date(2026, 1, 12))
    assert result["raw_removed"] == ["2026-01-10"]
    assert result["derived_removed"] == ["2026-01-10", "2026-01-11"]
    assert not paths.raw(dt.date(2026, 1, 10)).exists() and paths.raw(dt.date(2026, 1, 11)).is_dir()
    assert not paths.frames(dt.date(2026, 1, 11)).exists() and paths.frames(dt.date(2026, 1, 12)).is_dir()
    # Memories stay searchable, with time and source, just without a frame to show.
    ids, vectors = days["2026-01-10"]
    top = search(engine, paths, space="vision", query=vectors[0], topk=1)[0]
    assert top.clip_id == ids[0] and top.frame_path is None and top.source_path.endswith("cam.mp4")
    assert _counts(engine, "2026-01-10")["shard_rows"] == 20
    assert doctor(paths)["problems"] == []


def test_retention_is_the_last_stage():
    assert STAGES[-1].name == "retention" and STAGES[-1].run == "stages.retention:run"


def test_doctor_repairs_a_missing_shard_file(mem):
    engine, paths, _ = mem
    shard = next(paths.embeddings.rglob("2026-01-11-*.npy"))
    shard.unlink()
    report = doctor(paths)
    assert len(report["problems"]) == 1 and "missing" in report["problems"][0] and not report["ok"]
    assert doctor(paths, repair=True)["ok"]
    assert doctor(paths)["problems"] == []
    assert {h.date for h in search(engine, paths, space="vision", query=np.ones(DIM), topk=100)} == \
        {"2026-01-10", "2026-01-12"}


def test_doctor_deletes_a_shard_file_nobody_knows(mem):
    _, paths, _ = mem
    stray = paths.embeddings / "vision" / "jepa@2026-01-01" / "2026-01-09-abc.npy"
    np.save(stray, np.ones((2, DIM), np.float16))
    assert doctor(paths)["problems"] == [f"{stray.relative_to(paths.root)}: shard file no database row knows"]
    doctor(paths, repair=True)
    assert not stray.exists() and doctor(paths)["problems"] == []


def test_doctor_compacts_a_shard_whose_clips_were_deleted(mem):
    engine, paths, days = mem
    ids, vectors = days["2026-01-12"]
    with Session(engine) as s, s.begin():
        s.execute(delete(Clip).where(Clip.id.in_(ids[:5])))  # cascades to their shard rows
    assert "5 vectors have no database row" in doctor(paths)["problems"][0]
    doctor(paths, repair=True)
    assert doctor(paths)["problems"] == []
    assert _counts(engine, "2026-01-12")["shard_rows"] == 15
    assert search(engine, paths, space="vision", query=vectors[7], topk=1)[0].clip_id == ids[7]


def test_doctor_drops_rows_of_missing_media(mem):
    _, paths, _ = mem
    frame = next(paths.frames(dt.date(2026, 1, 10)).iterdir())
    frame.unlink()
    problems = doctor(paths)["problems"]
    assert problems == [f"frame {frame.relative_to(paths.root)}: file missing"]
    doctor(paths, repair=True)
    assert doctor(paths)["problems"] == []


def test_cli_query_by_clip_json_then_forget(mem):
    engine, paths, days = mem
    ids, vectors = days["2026-01-11"]
    proc = run_cli("query", "--clip", str(ids[4]), "--json", "--topk", "5", "--root", str(paths.root))
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)
    version, stored = clip_vector(engine, paths, "vision", ids[4])
    expected = search(engine, paths, space="vision", query=stored, topk=5,
                      model_version=version, exclude_clip_ids=(ids[4],))
    assert hits == [h.as_dict() for h in expected]
    assert ids[4] not in {h["clip_id"] for h in hits} and len(hits) == 5

    human = run_cli("query", "--clip", str(ids[4]), "--from", "2026-01-12", "--root", str(paths.root))
    assert human.returncode == 0 and "data/raw/2026-01-12/cam.mp4" in human.stdout
    assert "2026-01-11" not in human.stdout

    refused = run_cli("forget", "--date", "2026-01-11", "--root", str(paths.root))
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert paths.raw(dt.date(2026, 1, 11)).is_dir()
    done = run_cli("forget", "--date", "2026-01-11", "--yes", "--root", str(paths.root))
    assert done.returncode == 0 and "removed" in done.stdout and "data/raw/2026-01-11" in done.stdout
    after = json.loads(run_cli("query", "--clip", str(days["2026-01-10"][0][0]), "--json",
                               "--topk", "100", "--root", str(paths.root)).stdout)
    assert len(after) == 39 and "2026-01-11" not in {h["date"] for h in after}
    gone = run_cli("query", "--clip", str(ids[4]), "--root", str(paths.root))
    assert gone.returncode == 2 and "no vision vector" in gone.stderr
    assert run_cli("doctor", "--root", str(paths.root)).returncode == 0


def test_cli_query_by_image_without_a_vision_model_is_a_usage_error(mem, tmp_path):
    _, paths, _ = mem
    image = tmp_path / "x.jpg"
    image.write_bytes(b"jpeg")
    proc = run_cli("query", "--image", str(image), "--root", str(paths.root))
    # No night has trained a vision model under this root yet.
    assert proc.returncode == 2, proc.stderr
    assert "checkpoint" in proc.stderr or "no trained model" in proc.stderr, proc.stderr


def test_every_memory_command_and_flag_has_help():
    from cli.main import build_parser

    sub = build_parser()._subparsers._group_actions[0]
    for name in ("query", "forget", "doctor"):
        parser = sub.choices[name]
        for action in parser._actions:
            assert action.help, f"{name} {action.option_strings}"
