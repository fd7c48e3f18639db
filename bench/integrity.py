"""What the shard checksums cost (issue #18): writing, a first search, a re-ranked search.

    python bench/integrity.py                 # 400k rows of 256-d over 10 days, ~1 min
    python bench/integrity.py --rows 2000000  # a bigger memory

Each figure beside its baseline measured in the same run, on the same memory:

- write: ``write_shard`` (block sums taken while writing) against ``np.save`` of the same
  array through the same atomic file;
- first exact search in a process (reads every shard whole, so it checks every block once)
  against the same search with the memory's sums cleared;
- IVF-PQ search, warm (re-ranking checks the blocks of the rows it reads, each once per
  process) against the same with the sums cleared.
"""
from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import update
from sqlalchemy.orm import Session

import memory.search  # noqa: F401  (the module; the package re-exports a function of its name)
from core.atomic import atomic_file
from core.paths import Paths
from memory import shards
from memory.catalog import Shard
from memory.db import open_database
from memory.schema import Clip, Source
from memory.store import EmbeddingRow, write_embeddings

search_module = sys.modules["memory.search"]


def _forget_caches() -> None:
    """What a new query process starts without (a sealed memory's decrypted shards included)."""
    shards._MAPS.clear()
    shards._CHECKED.clear()
    shards._HELD.clear()
    search_module._INDEXES.clear()
    search_module._ROW_META.clear()
    search_module.DAMAGED.clear()


def _fill(paths: Paths, engine, rows: int, days: int, dim: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((64, dim)).astype(np.float32)
    per_day = rows // days
    queries = []
    for d in range(days):
        date = (dt.date(2026, 1, 1) + dt.timedelta(d)).isoformat()
        with Session(engine) as session, session.begin():
            source = Source(date=date, path=f"data/raw/{date}/cam.mp4", content_hash=f"{d:064x}", size_bytes=1,
                            status="ok", has_video=True, has_audio=False)
            session.add(source)
            session.flush()
            clips = [Clip(source_id=source.id, date=date, index=i, start_s=3.0 * i, end_s=3.0 * i + 3)
                     for i in range(per_day)]
            session.add_all(clips)
            session.flush()
            ids = [c.id for c in clips]
        vectors = centres[rng.integers(0, 64, per_day)] + 0.3 * rng.standard_normal((per_day, dim)).astype(np.float32)
        write_embeddings(engine, paths, space="vision", model_version="jepa@2026-01-01", date=date,
                         rows=[EmbeddingRow(c, "vision") for c in ids], vectors=vectors)
        queries.append(vectors[:5])
    return np.concatenate(queries)


def _clear_sums(engine) -> None:
    with Session(engine) as session, session.begin():
        session.execute(update(Shard).values(block_sums=None))


def _timed_search(engine, paths, queries, options, *, first_only: bool) -> float:
    _forget_caches()
    times = []
    for q in queries[:1] if first_only else queries:
        started = time.perf_counter()
        search_module.search(engine, paths, space="vision", query=q, topk=10, options=options)
        times.append(time.perf_counter() - started)
    return times[0] if first_only else statistics.median(times[1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--dim", type=int, default=256)
    args = parser.parse_args()
    print(f"{platform.node()} {platform.machine()}, python {platform.python_version()}; "
          f"{args.rows:,} rows of {args.dim}-d float16 over {args.days} days")
    with tempfile.TemporaryDirectory(prefix="integrity-bench-") as tmp:
        paths = Paths.at(tmp)
        engine = open_database(paths.database)

        unit = shards.normalise(np.random.default_rng(1).standard_normal((args.rows // args.days, args.dim)))
        plain, summed = [], []
        for _ in range(3):
            started = time.perf_counter()
            with atomic_file(paths.root / "plain.npy") as fh:
                np.save(fh, unit.astype(shards.DTYPE), allow_pickle=False)
            plain.append(time.perf_counter() - started)
            started = time.perf_counter()
            written = shards.write_shard(paths, space="bench", model_version="m@1", date="2026-01-01", unit=unit)
            summed.append(time.perf_counter() - started)
            written.path.unlink()
        mb = unit.shape[0] * unit.shape[1] * 2 / 1e6
        print(f"write a {mb:.0f} MB shard: {min(summed) * 1e3:.0f} ms with block sums, {min(plain) * 1e3:.0f} ms "
              f"np.save alone; ratio {min(summed) / min(plain):.2f}")

        queries = _fill(paths, engine, args.rows, args.days, args.dim)
        exact = search_module.SearchOptions(index="exact")
        ivfpq = search_module.SearchOptions(index="auto", faiss_threshold=0, index_ram_gb=1e-6)
        _timed_search(engine, paths, queries, ivfpq, first_only=True)  # builds and caches the index
        checked = {"first exact": _timed_search(engine, paths, queries, exact, first_only=True),
                   "ivfpq warm": _timed_search(engine, paths, queries, ivfpq, first_only=False)}
        _clear_sums(engine)
        bare = {"first exact": _timed_search(engine, paths, queries, exact, first_only=True),
                "ivfpq warm": _timed_search(engine, paths, queries, ivfpq, first_only=False)}
        for name, seconds in checked.items():
            print(f"{name} search: {seconds * 1e3:.1f} ms checking blocks, {bare[name] * 1e3:.1f} ms without "
                  f"sums; ratio {seconds / bare[name]:.2f}")
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
