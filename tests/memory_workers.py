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
