"""Processes for the concurrency tests (importable by ``spawn``)."""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

BIG_DIM = 1024


def context():
    """Workers fork from a fresh server that has imported torch but never run it (fork-safe
    OpenMP), so eight readers start in a fraction of spawn's time."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "memory.store", "memfill"])
    return ctx


def _setup(root: str):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch

    torch.set_num_threads(1)
    from core.paths import Paths
    from memory.db import open_database

    paths = Paths.at(root)
    return open_database(paths.database), paths


def reader(root: str, new_day: str, old_counts: dict, done_flag: str, out_queue) -> None:
    """Search in a loop until the writer is done; report the row counts seen for ``new_day``."""
    try:
        engine, paths = _setup(root)
        from memory.store import search

        seen, errors, loops = set(), [], 0
        query = np.ones(32, np.float32)
        while True:
            finished = os.path.exists(done_flag)
            try:
                hits = search(engine, paths, space="vision", query=query, topk=10_000)
                by_day: dict[str, int] = {}
                for h in hits:
                    by_day[h.date] = by_day.get(h.date, 0) + 1
                seen.add(by_day.get(new_day, 0))
                for day, n in old_counts.items():
                    if by_day.get(day, 0) != n:
                        errors.append(f"{day}: saw {by_day.get(day, 0)} rows, expected {n}")
            except Exception:
                errors.append(traceback.format_exc())
            loops += 1
            if finished:
                break
        out_queue.put({"seen": sorted(seen), "errors": errors[:3], "loops": loops})
    except Exception:
        out_queue.put({"seen": [], "errors": [traceback.format_exc()], "loops": 0})


def writer(root: str, day: str, clip_ids: list[int], rewrites: int, done_flag: str) -> None:
    """Write (and rewrite) one day's vision shard while readers search."""
    engine, paths = _setup(root)
    from memfill import day_vectors

    from memory.store import EmbeddingRow, write_embeddings

    try:
        for k in range(rewrites):
            write_embeddings(engine, paths, space="vision", model_version="jepa@2026-01-01",
                             date=day, rows=[EmbeddingRow(c, "vision") for c in clip_ids],
                             vectors=day_vectors(len(clip_ids), 100 + k))
            time.sleep(0.05)
    finally:
        Path(done_flag).touch()


def big_writer(root: str, clip_id: int, rows: int) -> None:
    """Write one large shard (the test kills this process while the file is being written)."""
    engine, paths = _setup(root)
    from memory.store import EmbeddingRow, write_embeddings

    vectors = np.ones((rows, BIG_DIM), np.float32)
    write_embeddings(engine, paths, space="vision", model_version="big@1",
                     date="2026-01-20", rows=[EmbeddingRow(clip_id, "vision")] * rows,
                     vectors=vectors)


def replace_vectors(version: int, n: int) -> np.ndarray:
    """The vectors of the ``version``-th write of the replaced day: every clip's own direction."""
    return np.random.default_rng(1000 + version).standard_normal((n, 32)).astype(np.float32)


def _stored(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` as a shard holds them (unit rows rounded to float16), in float32."""
    from memory.shards import DTYPE, normalise

    return normalise(vectors).astype(DTYPE).astype(np.float32)


def replace_reader(root: str, day: str, model_version: str, clip_ids: list[int], index: str,
                   ready_flag: str, done_flag: str, written, loops, out_queue) -> None:
    """Search one day in a loop while another process replaces its shard; report what was wrong.

    Every answer must be all ``len(clip_ids)`` clips, scored as exactly one of the day's
    writes so far scores them (never a mix, never a part), with the query's own clip first
    when the query came from the version answering. ``written`` is the last version the
    writer committed. The shard mapped at the start is held open and read on every loop,
    after its file has been replaced and deleted.
    """
    try:
        engine, paths = _setup(root)
        from sqlalchemy import select
        from sqlalchemy.orm import Session

        from memory.catalog import Shard
        from memory.search import SearchOptions, search
        from memory.shards import open_shard

        options = SearchOptions(index=index, faiss_threshold=1 if index != "exact" else 200_000)
        n = len(clip_ids)
        stored: list[np.ndarray] = []
        with Session(engine) as session:
            first = session.scalars(select(Shard).where(Shard.date == day)).one()
        held = open_shard(paths, first)
        held_copy = np.array(held)
        Path(ready_flag).touch()
        rng = np.random.default_rng(7)
        errors: list[str] = []
        answered_by: set[int] = set()
        while True:
            finished = os.path.exists(done_flag)
            latest = written.value
            # Half the queries from the newest version, so that its own clip must come first.
            version = latest if rng.random() < 0.5 else int(rng.integers(latest + 1))
            clip = int(rng.integers(n))
            query = replace_vectors(version, n)[clip]
            unit = query / np.linalg.norm(query)
            try:
                hits = search(engine, paths, space="vision", query=query, topk=n,
                              model_version=model_version, options=options)
                # The writer may have committed one more version than it has said yet.
                while len(stored) <= written.value + 1:
                    stored.append(_stored(replace_vectors(len(stored), n)))
                got = {h.clip_id: h.score for h in hits}
                if len(hits) != n or set(got) != set(clip_ids):
                    errors.append(f"{len(hits)} hits of {n} clips ({len(set(got))} distinct)")
                else:
                    scores = np.array([got[c] for c in clip_ids])
                    matches = [v for v, vectors in enumerate(stored)
                               if np.abs(vectors @ unit - scores).max() < 1e-4]
                    if len(matches) != 1:
                        errors.append(f"scores match {len(matches)} of the versions written, not one")
                    else:
                        answered_by.add(matches[0])
                        if matches[0] == version and hits[0].clip_id != clip_ids[clip]:
                            errors.append(f"the nearest to clip {clip_ids[clip]}'s own vector "
                                          f"is clip {hits[0].clip_id}")
                if not np.array_equal(np.asarray(held), held_copy):
                    errors.append("the held shard's memory map changed")
            except Exception:  # noqa: BLE001 - every failure is the test's finding
                errors.append(traceback.format_exc())
            with loops.get_lock():
                loops.value += 1
            if finished:
                break
        out_queue.put({"errors": errors[:5], "n_errors": len(errors), "loops": loops.value,
                       "answered_by": sorted(answered_by)})
    except Exception:  # noqa: BLE001 - reported to the test, which fails on it
        out_queue.put({"errors": [traceback.format_exc()], "n_errors": 1, "loops": 0,
                       "answered_by": []})
