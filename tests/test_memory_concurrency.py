"""Readers during a write, and a writer killed mid-shard."""
from __future__ import annotations

import os
import signal
import time

import memory_workers
import numpy as np
from memfill import add_day, fill
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.atomic import TMP_MARK
from core.paths import Paths
from memory.catalog import Shard
from memory.db import open_database
from memory.doctor import doctor
from memory.store import latest_version, search


def test_readers_see_all_of_a_day_or_none_and_no_errors(root):
    paths = Paths.at(root)
    engine = open_database(paths.database)
    old = fill(engine, paths, ["2026-01-10", "2026-01-11"], n_clips=50)
    new_ids = add_day(engine, paths, "2026-01-12", 300, seed=9)
    engine.dispose()
    done = str(root / "writer-done")
    ctx = memory_workers.context()
    results = ctx.Queue()
    readers = [ctx.Process(target=memory_workers.reader,
                           args=(str(root), "2026-01-12", {d: 50 for d in old}, done, results))
               for _ in range(8)]
    for p in readers:
        p.start()
    writer = ctx.Process(target=memory_workers.writer, args=(str(root), "2026-01-12", new_ids, 6, done))
    writer.start()
    writer.join(120)
    outcomes = [results.get(timeout=120) for _ in readers]
    for p in readers:
        p.join(30)
    assert writer.exitcode == 0
    for outcome in outcomes:
        assert outcome["errors"] == [], outcome["errors"]
        assert set(outcome["seen"]) <= {0, 300}, outcome["seen"]
        assert outcome["loops"] > 0
    # Every reader's last search came after the writer finished.
    assert all(300 in o["seen"] for o in outcomes)


def test_writer_killed_mid_shard_leaves_the_store_consistent(root):
    paths = Paths.at(root)
    engine = open_database(paths.database)
    fill(engine, paths, ["2026-01-10"], n_clips=20)
    clip = add_day(engine, paths, "2026-01-20", 1, seed=3)[0]
    before = [h.clip_id for h in search(engine, paths, space="vision", query=np.ones(32), topk=5)]
    rows = 150_000
    expected_bytes = rows * memory_workers.BIG_DIM * 2
    ctx = memory_workers.context()
    proc = ctx.Process(target=memory_workers.big_writer, args=(str(root), clip, rows))
    proc.start()
    killed_mid_write = False
    deadline = time.monotonic() + 120
    while proc.is_alive() and time.monotonic() < deadline:
        partial = [p for p in paths.embeddings.rglob(f"*{TMP_MARK}*")]
        sizes = [p.stat().st_size for p in partial if p.exists()]
        if sizes and 0 < max(sizes) < expected_bytes // 2:
            os.kill(proc.pid, signal.SIGKILL)
            killed_mid_write = True
            break
        time.sleep(0.002)
    proc.join(30)
    assert killed_mid_write, "the writer finished before it could be killed"
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Shard).where(Shard.date == "2026-01-20")) == 0
    assert latest_version(engine, "vision") == "jepa@2026-01-01"
    report = doctor(paths)
    assert report["problems"] == [] and report["ok"]
    assert any("interrupted write" in n for n in report["notes"])
    after = [h.clip_id for h in search(engine, paths, space="vision", query=np.ones(32), topk=5)]
    assert after == before
    engine.dispose()
