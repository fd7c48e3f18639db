"""A reader holding a memory-mapped shard while a night replaces it: no crash, no torn answer.

Each rewrite of a day's vectors (a stage rerun, ``reembed``) writes a new shard file and
deletes the old one; a reader in another process has that old file mapped (``_MAPS``) and
may be between reading the shard list and resolving rows when it happens.
"""
from __future__ import annotations

import time

import memory_workers
import numpy as np
import pytest
from memfill import add_day
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.paths import Paths
from memory.catalog import Shard
from memory.db import open_database
from memory.doctor import doctor
from memory.store import EmbeddingRow, write_embeddings

DAY = "2026-01-12"
VERSION = "jepa@2026-01-01"
CLIPS = 120
# The writer replaces the shard back to back until the reader has searched this often (and
# at least this many times over): a search lands on a replacement in about one in twenty.
SEARCHES, MIN_REWRITES, MAX_REWRITES = 300, 100, 5000


def _write(engine, paths, clip_ids, version, reorder):
    """The ``version``-th write of the day; ``reorder``: its rows in another order of clips
    (as after a rerun ingest), so that a row number means another clip in each version."""
    vectors = memory_workers.replace_vectors(version, len(clip_ids))
    order = (np.random.default_rng(version).permutation(len(clip_ids)) if reorder and version
             else np.arange(len(clip_ids)))
    return write_embeddings(engine, paths, space="vision", model_version=VERSION, date=DAY,
                            rows=[EmbeddingRow(clip_ids[i], "vision") for i in order],
                            vectors=vectors[order])


def _wait(condition, what, seconds=120):
    """Poll ``condition`` until it holds; fail naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


# A search reads the shard list, each shard's rows and finally the rows' clips in separate
# statements, and SQLite gives the replacing shard the id of the one it replaced (the
# highest id, deleted in the same transaction): without one read transaction (a snapshot)
# around each attempt of ``memory.search.search``, a replacement between those statements
# paired the old file's scores with the new rows' clips (the ``reorder`` case: wrong answers
# in a quarter of its searches).


@pytest.mark.parametrize("index, reorder", [("exact", False), ("flat", False),
                                            ("exact", True)])
def test_a_reader_survives_its_shard_being_replaced(root, index, reorder):
    paths = Paths.at(root)
    engine = open_database(paths.database)
    clip_ids = add_day(engine, paths, DAY, CLIPS)
    first = _write(engine, paths, clip_ids, 0, reorder)
    ctx = memory_workers.context()
    results, loops, last = ctx.Queue(), ctx.Value("i", 0), ctx.Value("i", 0)
    ready, done = root / "reader-ready", root / "writer-done"
    reader = ctx.Process(target=memory_workers.replace_reader, args=(
        str(root), DAY, VERSION, clip_ids, index, str(ready), str(done), last, loops, results))
    reader.start()
    try:
        _wait(lambda: ready.exists() or not reader.is_alive(), "the reader to map the shard")
        written = [first.path]
        while reader.is_alive() and len(written) <= MAX_REWRITES and (
                len(written) <= MIN_REWRITES or loops.value < SEARCHES):
            written.append(_write(engine, paths, clip_ids, len(written), reorder).path)
            last.value = len(written) - 1
        done.touch()
        outcome = results.get(timeout=120)
    finally:
        done.touch()
        reader.join(60)
    assert reader.exitcode == 0
    assert outcome["errors"] == [], f"{outcome['n_errors']} bad answers, first: {outcome['errors']}"
    assert outcome["loops"] >= SEARCHES
    assert len(outcome["answered_by"]) > 10  # it did see the day change under it, often
    # The old files are gone from the disk (the reader held the first one all along).
    assert not (root / first.path).exists()
    assert [p for p in written if (root / p).exists()] == [written[-1]]
    with Session(engine) as session:
        assert session.scalars(select(Shard.path).where(Shard.date == DAY)).all() == [written[-1]]
    assert doctor(paths)["problems"] == []
    engine.dispose()


def test_a_search_that_loses_the_race_three_times_running_reads_the_list_again(root, monkeypatch):
    """On a busy machine (CI, two cores) a reader lost the race with a replacing writer on all
    three attempts and raised FileNotFoundError to its caller, though no row named a missing
    file. It now waits a moment and reads the list again, up to MAX_SHARD_RACES rounds."""
    import importlib

    search_module = importlib.import_module("memory.search")  # the module, not memory.search()

    paths = Paths.at(root)
    engine = open_database(paths.database)
    clip_ids = add_day(engine, paths, DAY, CLIPS)
    _write(engine, paths, clip_ids, 0, False)
    candidates, lost = search_module._candidates, []

    def losing(*args, **kwargs):
        if len(lost) < 7:  # the first seven reads find the file replaced
            lost.append(1)
            raise FileNotFoundError("replaced under the reader")
        return candidates(*args, **kwargs)

    monkeypatch.setattr(search_module, "_candidates", losing)
    query = memory_workers.replace_vectors(0, CLIPS)[5]
    hits = search_module.search(engine, paths, space="vision", query=query, topk=3, model_version=VERSION)
    assert len(lost) == 7 and hits and hits[0].clip_id == clip_ids[5]

    lost.clear()
    monkeypatch.setattr(search_module, "MAX_SHARD_RACES", 1)  # a writer that never stops: say so
    with pytest.raises(FileNotFoundError):
        search_module.search(engine, paths, space="vision", query=query, topk=3, model_version=VERSION)
    engine.dispose()
