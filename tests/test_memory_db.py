"""Opening the database: a memory from before the OpenCLIP rename comes up under the new names."""
from __future__ import annotations

import numpy as np
import pytest
from memfill import add_day
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.paths import Paths
from memory.catalog import EmbeddingSpace, Shard, latest_version, spaces
from memory.db import open_database
from memory.doctor import doctor
from memory.store import EmbeddingRow, load_vectors, write_embeddings

DAY = "2026-01-10"
OLD = "clip@tiny-0123456789ab"
NEW = "openclip@tiny-0123456789ab"


def _space_rows(engine) -> list[tuple[str, str]]:
    with Session(engine) as session:
        return sorted(tuple(r) for r in session.execute(
            select(EmbeddingSpace.name, EmbeddingSpace.model_version)))


def _write(engine, paths, space, version, ids, seed=0):
    vectors = np.random.default_rng(seed).standard_normal((len(ids), 8)).astype(np.float32)
    write_embeddings(engine, paths, space=space, model_version=version, date=DAY,
                     rows=[EmbeddingRow(c, "vision") for c in ids], vectors=vectors)


@pytest.fixture
def engines():
    """Engines opened by a test, disposed after it."""
    opened = []
    yield lambda paths: opened.append(open_database(paths.database)) or opened[-1]
    for engine in opened:
        engine.dispose()


@pytest.fixture
def old_memory(root):
    """A memory as the stage wrote it before the rename, with a cached index of ``clip``."""
    paths = Paths.at(root)
    engine = open_database(paths.database)
    ids = add_day(engine, paths, DAY, 4)
    for space in ("clip", "clip_frame", "vision"):
        _write(engine, paths, space, OLD if space != "vision" else "jepa@2026-01-01", ids)
    index = paths.memory / "index" / "clip" / OLD
    index.mkdir(parents=True)
    (index / "ivf-0000.json").write_text("{}")
    engine.dispose()
    return paths, ids


def test_opening_renames_the_clip_spaces_and_their_versions(old_memory, engines):
    paths, _ = old_memory
    engine = engines(paths)
    assert _space_rows(engine) == [("openclip", NEW), ("openclip_frame", NEW),
                                   ("vision", "jepa@2026-01-01")]
    assert spaces(engine) == ["vision", "openclip", "openclip_frame"]
    assert latest_version(engine, "openclip") == NEW


def test_renamed_spaces_read_their_shards_where_they_lie(old_memory, engines):
    paths, ids = old_memory
    engine = engines(paths)
    with Session(engine) as session:
        shard_paths = sorted(session.scalars(select(Shard.path)))
    # Files stay in the old folders; the rows name them by path.
    assert [p.split("/")[2] for p in shard_paths] == ["clip", "clip_frame", "vision"]
    rows, vectors = load_vectors(engine, paths, space="openclip", model_version=NEW, date=DAY)
    assert [r.clip_id for r in rows] == ids and vectors.shape == (4, 8)
    assert doctor(paths)["problems"] == []
    # The cached index under the old name would never be used nor forgotten: it is gone.
    assert not (paths.memory / "index" / "clip").exists()


def test_opening_again_changes_nothing(old_memory, engines):
    paths, _ = old_memory
    first = _space_rows(engines(paths))
    assert _space_rows(engines(paths)) == first


def test_a_new_name_already_taken_leaves_the_old_space_as_it_is(root, engines):
    paths = Paths.at(root)
    engine = open_database(paths.database)
    ids = add_day(engine, paths, DAY, 3)
    _write(engine, paths, "clip", OLD, ids)
    _write(engine, paths, "openclip", NEW, ids, seed=1)
    engine.dispose()
    engine = engines(paths)  # must not fail on the unique (name, version)
    assert _space_rows(engine) == [("clip", OLD), ("openclip", NEW)]


def test_a_frame_is_deleted_through_an_index_also_in_a_memory_made_before_it(tmp_path):
    """Deleting a frame nulls its shard rows' frame_id; without an index SQLite scans every
    shard row for each frame (a year: 49M rows, seconds a frame)."""
    import sqlite3

    path = tmp_path / "memory" / "episodic.sqlite"
    open_database(path).dispose()
    with sqlite3.connect(path) as db:
        db.execute("DROP INDEX ix_shard_rows_frame")  # as a memory from before the index
    open_database(path).dispose()
    with sqlite3.connect(path) as db:
        plan = " ".join(str(row) for row in db.execute(
            "EXPLAIN QUERY PLAN UPDATE shard_rows SET frame_id = NULL WHERE frame_id = 7"))
    assert "ix_shard_rows_frame" in plan
