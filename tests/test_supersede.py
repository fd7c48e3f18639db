"""Dropping superseded versions: only what the active version fully holds, rows first, files after."""
from __future__ import annotations

import numpy as np
import pytest
from memfill import DIM, add_day, embed_day
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.paths import Paths
from memory import activate_if_complete, drop_superseded, record_day, search, version_table
from memory.db import open_database
from memory.doctor import doctor
from memory.maps import SpaceMapRow, load_map, save_map
from memory.search import index_folder
from memory.shards import shard_folder
from memory.versions import ReembeddedDay

DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]
V1, V2, V3 = "jepa@2026-01-02", "jepa@2026-01-03", "jepa@2026-01-04"


@pytest.fixture
def mem(root):
    paths = Paths.at(root)
    engine = open_database(paths.database)
    clips = {day: add_day(engine, paths, day, 12, seed=k) for k, day in enumerate(DAYS)}
    yield engine, paths, clips
    engine.dispose()


def _versions(engine, space="vision") -> list[str]:
    return [r["version"] for r in version_table(engine) if r["space"] == space]


def _fill(engine, paths, clips, version: str, days: list[str], *, drop: dict[str, int] | None = None) -> None:
    for k, day in enumerate(days):
        ids = clips[day][:len(clips[day]) - (drop or {}).get(day, 0)]
        embed_day(engine, paths, day, ids, seed=10 * k + len(version), version=version)


def _two_versions(engine, paths, clips, *, v2_lacks: dict[str, int] | None = None) -> None:
    """V1 holds days 1-2, V2 days 1-3 (less ``v2_lacks`` clips per day) and is active."""
    _fill(engine, paths, clips, V1, DAYS[:2])
    _fill(engine, paths, clips, V2, DAYS, drop=v2_lacks)
    assert activate_if_complete(engine, "vision", V2)


def test_a_version_the_active_one_fully_holds_is_dropped(mem):
    engine, paths, clips = mem
    _two_versions(engine, paths, clips)
    cached = index_folder(paths, "vision", V1)  # an approximate index cached on disk earlier
    cached.mkdir(parents=True)
    (cached / "ivf-0123.faiss").write_bytes(b"index")
    result = drop_superseded(engine, paths, "vision")
    assert result["dropped"] == [V1] and result["kept"] == {}
    assert result["bytes_freed"] > 2 * 12 * DIM * 2  # two days of float16 rows, plus the index
    assert not shard_folder(paths, "vision", V1).exists() and not cached.exists()
    assert _versions(engine) == [V2]
    query = np.ones(DIM, np.float32)
    hits = search(engine, paths, space="vision", query=query, topk=100, model_version=V2)
    assert len(hits) == 36 and {h.model_version for h in hits} == {V2}
    assert doctor(paths)["problems"] == []


def test_a_clip_only_the_old_version_holds_keeps_it(mem):
    engine, paths, clips = mem
    _two_versions(engine, paths, clips, v2_lacks={DAYS[0]: 1})  # V2 could not re-embed one clip
    result = drop_superseded(engine, paths, "vision")
    assert result["dropped"] == [] and result["bytes_freed"] == 0
    assert list(result["kept"]) == [V1] and result["kept"][V1].startswith("1 clip(s)")
    assert shard_folder(paths, "vision", V1).is_dir() and _versions(engine) == [V1, V2]


def test_without_a_switch_recorded_nothing_is_dropped(mem):
    engine, paths, clips = mem
    _fill(engine, paths, clips, V1, DAYS[:2])
    _fill(engine, paths, clips, V2, DAYS)  # complete, but never activated: the fallback is no switch
    assert drop_superseded(engine, paths, "vision") == {"dropped": [], "kept": {}, "bytes_freed": 0}
    assert _versions(engine) == [V1, V2]


def test_maps_into_a_dropped_version_go_with_it_and_the_newest_stays(mem):
    engine, paths, clips = mem
    _two_versions(engine, paths, clips)
    _fill(engine, paths, clips, V3, DAYS[2:])  # tonight's, still being filled
    arrays = {"w": np.eye(DIM, dtype=np.float32)}
    old = save_map(engine, paths, space="vision", from_version=V2, to_version=V1, kind="ridge", arrays=arrays,
                   heldout={})
    save_map(engine, paths, space="vision", from_version=V3, to_version=V2, kind="ridge", arrays=arrays,
             heldout={})
    assert drop_superseded(engine, paths, "vision")["dropped"] == [V1]
    assert load_map(engine, paths, "vision", V2, V1) is None and not (paths.root / old).exists()
    assert load_map(engine, paths, "vision", V3, V2) is not None  # the newest still reaches the active one
    with Session(engine) as session:
        assert session.scalar(select(SpaceMapRow.to_version)) == V2
    assert _versions(engine) == [V2, V3]
    assert doctor(paths)["problems"] == []


def test_another_versions_reembed_record_moves_to_the_active_shard(mem):
    engine, paths, clips = mem
    _fill(engine, paths, clips, V1, DAYS[:1])
    _fill(engine, paths, clips, V3, DAYS[2:])
    # V3 found nothing to embed of day 1; its record points at V1's shard, the only one then.
    record_day(engine, space="vision", version=V3, date=DAYS[0], clips=0, missing=12, seconds=0.0)
    _fill(engine, paths, clips, V2, DAYS)
    assert activate_if_complete(engine, "vision", V2)
    assert drop_superseded(engine, paths, "vision")["dropped"] == [V1]
    with Session(engine) as session:
        assert session.scalars(select(ReembeddedDay.date)).all() == [DAYS[0]]


def test_dropping_twice_changes_nothing(mem):
    engine, paths, clips = mem
    _two_versions(engine, paths, clips)
    assert drop_superseded(engine, paths, "vision")["dropped"] == [V1]
    assert drop_superseded(engine, paths, "vision") == {"dropped": [], "kept": {}, "bytes_freed": 0}
    assert _versions(engine) == [V2]


def test_doctor_removes_map_files_and_indexes_no_row_knows(mem):
    engine, paths, clips = mem
    _fill(engine, paths, clips, V2, DAYS)
    orphan = paths.memory / "maps" / "vision" / f"{V2}__{V1}.20260101T000000000000.npz"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"map")
    stale = index_folder(paths, "vision", V1)
    stale.mkdir(parents=True)
    (stale / "ivf-0123.json").write_text("{}")
    assert len(doctor(paths)["problems"]) == 2
    assert doctor(paths, repair=True)["ok"]
    assert not orphan.exists() and not stale.exists() and doctor(paths)["problems"] == []
