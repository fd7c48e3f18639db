"""Top-10 search latency and recall over synthetic memories of 100k, 1M, 10M and 21M vectors.

    python bench/search.py --sizes 100000,1000000,10000000 --queries 100
    python bench/search.py --sizes 21000000 --datasets clustered --days 365 \
        --methods exact,ivfpq,ivfpq-cold,ivf --queries 100

21M is a year of frames (about 58k a day). Its vectors (10.8 GB as float16) are written
to the memory map chunk by chunk and never held in RAM as float32; every method reads them
from the map.

For each size and dataset it writes float16 256-d vectors to a temporary memory-mapped
``.npy`` (as the store keeps them), computes exact top-10 for the queries as ground truth,
then times single queries (median of ``--queries``) for:

- ``exact``: the store's exact path (:func:`memory.exact.exact_topk`, torch kernel on the map),
- ``numpy``: plain NumPy (float16 -> float32 per chunk, matrix-vector product), small sizes,
- ``faiss-flat``: ``IndexFlatIP`` (exact, float32 copy in RAM),
- ``faiss-ivf``: IVF, float16 storage, ``nprobe`` tuned on separate queries to recall@10 >= 0.97
  (the store's floor 0.95 plus its tuning margin),
- ``faiss-ivfpq``: IVF-PQ (128-byte codes for 256-d) whose candidates are re-ranked exactly
  from the memory map, ``nprobe`` and re-rank factor tuned the same way: the store's index
  for a memory larger than its RAM budget (:mod:`memory.faiss_index`),
- ``faiss-ivfpq-cold``: the same index, the vectors' file evicted from the page cache before
  every query, so re-ranking reads its rows from disk (a store larger than RAM),
- ``faiss-hnsw``: HNSW (float16 storage), ``efSearch`` tuned the same way, small sizes only.

Each row also gives the index's size in RAM (codes, ids and centroids; ``exact`` and the
memory map need none) and the process's anonymous memory after the build (its heap, the
page cache not counted).

Datasets: ``clustered`` is shaped like a life's embeddings (thousands of tight clusters of
near-duplicate moments, clusters grouped into places, uneven cluster sizes); ``isotropic``
is uniform on the sphere, the worst case for approximate indexes.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import mmap
import os
import platform
import statistics
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import faiss
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memory.exact import Block, exact_topk, exact_topk_batch, recall_at_k
from memory.faiss_index import (
    TUNE_MARGIN,
    build_flat,
    build_hnsw,
    build_ivf,
    build_ivfpq,
    default_nlist,
    index_bytes,
    tune,
)

DIM = 256
GEN_CHUNK = 500_000


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class Clustered:
    """Moments: ``N/1000`` (at least 2,000) tight clusters around 200 places."""

    def __init__(self, n: int, seed: int):
        rng = np.random.default_rng(seed)
        self.n_clusters = max(2000, n // 1000)
        places = _normalise(rng.standard_normal((200, DIM)).astype(np.float32))
        around = rng.integers(0, len(places), self.n_clusters)
        centres = places[around] + 0.8 * _normalise(
            rng.standard_normal((self.n_clusters, DIM)).astype(np.float32))
        self.centres = _normalise(centres)
        weights = rng.lognormal(0.0, 1.0, self.n_clusters)
        self.p = weights / weights.sum()
        # Noise of norm ~0.3: a moment's frames have cosine ~0.95 with their cluster centre.
        self.sigma = 0.3 / math.sqrt(DIM)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        which = rng.choice(self.n_clusters, size=n, p=self.p)
        x = self.centres[which] + rng.normal(scale=self.sigma, size=(n, DIM)).astype(np.float32)
        return _normalise(x)


class Isotropic:
    def __init__(self, n: int, seed: int):
        pass

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return _normalise(rng.standard_normal((n, DIM)).astype(np.float32))


DATASETS = {"clustered": Clustered, "isotropic": Isotropic}


def make_dataset(kind: str, n: int, folder: Path, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Write ``n`` vectors to ``folder/{kind}-{n}.npy``; return (memmap, eval queries, tune queries).

    Tuning uses its own (at least 200) queries, so the recall reported is on unseen ones.
    """
    gen = DATASETS[kind](n, seed)
    path = folder / f"{kind}-{n}.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, DIM))
    rng = np.random.default_rng(seed + 1)
    for start in range(0, n, GEN_CHUNK):
        out[start:start + GEN_CHUNK] = gen.sample(min(GEN_CHUNK, n - start), rng)
    out.flush()
    del out
    qrng = np.random.default_rng(seed + 2)
    return (np.load(path, mmap_mode="r"), gen.sample(ARGS.queries, qrng),
            gen.sample(max(200, ARGS.queries), qrng))


def time_single(search, queries: np.ndarray, k: int, before=None) -> tuple[float, np.ndarray]:
    """Median ms of single-query searches, and the ids found ``(Q, k)``.

    ``before``, when given, runs untimed ahead of each query (e.g. to evict the page cache).
    """
    found = np.full((len(queries), k), -1, np.int64)
    times = []
    search(queries[0])  # warm caches (page cache, lazy allocations)
    for qi, q in enumerate(queries):
        if before is not None:
            before()
        t = time.perf_counter()
        ids = search(q)
        times.append((time.perf_counter() - t) * 1000)
        found[qi, :len(ids)] = ids[:k]
    return statistics.median(times), found


def numpy_topk(vectors: np.ndarray, q: np.ndarray, k: int, chunk: int = 65_536) -> np.ndarray:
    best_s, best_i = np.empty(0, np.float32), np.empty(0, np.int64)
    for start in range(0, len(vectors), chunk):
        s = vectors[start:start + chunk].astype(np.float32) @ q
        top = np.argpartition(-s, min(k, len(s) - 1))[:k]
        best_s = np.concatenate([best_s, s[top]])
        best_i = np.concatenate([best_i, top + start])
        order = np.argsort(-best_s)[:k]
        best_s, best_i = best_s[order], best_i[order]
    return best_i


def rss_anon_gib() -> float:
    """Anonymous resident memory (heap, indexes); memory-mapped file pages are not counted."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def evict(vectors: np.memmap, path: Path) -> None:
    """Drop the vectors' file from this process's mapping and from the page cache."""
    vectors._mmap.madvise(mmap.MADV_DONTNEED)  # unmapped pages can be evicted
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run_one(n: int, kind: str, folder: Path, k: int) -> list[dict]:
    rows: list[dict] = []
    t0 = time.perf_counter()
    vectors, queries, tune_queries = make_dataset(kind, n, folder, ARGS.seed)
    # One block per night's shard, as the store searches them (views of the one map).
    bounds = np.linspace(0, n, ARGS.days + 1).astype(np.int64)
    blocks = [Block(int(a), vectors[a:b]) for a, b in pairwise(bounds) if b > a]
    _, truth = exact_topk_batch(blocks, queries, k)
    _, tune_truth = exact_topk_batch(blocks, tune_queries, k)
    log(f"{kind} {n}: data + ground truth in {time.perf_counter() - t0:.0f}s, "
        f"RssAnon {rss_anon_gib():.2f} GiB")

    def record(method: str, ms: float, found: np.ndarray, note: str = "",
               build_s: float | None = None, index_gib: float | None = None):
        row = {"size": n, "dataset": kind, "method": method, "median_ms": round(ms, 2),
               "recall@10": round(recall_at_k(found, truth), 4), "note": note,
               "build_s": None if build_s is None else round(build_s, 1),
               "index_gib": None if index_gib is None else round(index_gib, 2),
               "rss_anon_gib": round(rss_anon_gib(), 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)

    ms, found = time_single(lambda q: exact_topk(blocks, q, k)[1], queries, k)
    exact_ms = ms
    record("exact", ms, found, "store path: torch fp16 on mmap + fp32 rescoring")
    if n <= ARGS.numpy_max and "numpy" in METHODS:
        ms, found = time_single(lambda q: numpy_topk(vectors, q, k), queries, k)
        record("numpy", ms, found, f"{exact_ms / ms:.2f}x exact")
    if n * DIM * 4 <= ARGS.flat_max_gb * 2**30 and "flat" in METHODS:
        t = time.perf_counter()
        flat = build_flat(blocks)
        build_s = time.perf_counter() - t
        ms, found = time_single(lambda q: flat.search(q[None], k)[1][0], queries, k)
        record("faiss-flat", ms, found, f"{exact_ms / ms:.2f}x exact", build_s,
               index_bytes("flat", n, DIM) / 2**30)
        del flat
        gc.collect()
    if METHODS & {"ivfpq", "ivfpq-cold"}:
        t = time.perf_counter()
        pq = build_ivfpq(blocks, nlist=default_nlist(n), seed=ARGS.seed)
        ok = tune(pq, tune_queries, tune_truth, k=k, min_recall=0.95 + TUNE_MARGIN)
        build_s = time.perf_counter() - t
        label = (f"nlist {pq.index.nlist}, {pq.index.code_size} B codes, nprobe {pq.param}, "
                 f"re-rank {pq.rerank_factor * k}{'' if ok else ' (floor not reached)'}")
        pq_gib = index_bytes("ivfpq", n, DIM) / 2**30
        if "ivfpq" in METHODS:
            ms, found = time_single(lambda q: pq.search(q[None], k)[1][0], queries, k)
            record("faiss-ivfpq", ms, found, f"{label}, {exact_ms / ms:.1f}x exact", build_s,
                   pq_gib)
        if "ivfpq-cold" in METHODS:
            path = folder / f"{kind}-{n}.npy"
            ms, found = time_single(lambda q: pq.search(q[None], k)[1][0], queries, k,
                                    before=lambda: evict(vectors, path))
            record("faiss-ivfpq-cold", ms, found,
                   f"{label}, file evicted before each query, {exact_ms / ms:.1f}x exact",
                   build_s, pq_gib)
        del pq
        gc.collect()
    if "ivf" in METHODS:
        t = time.perf_counter()
        ivf = build_ivf(blocks, nlist=default_nlist(n), seed=ARGS.seed)
        ok = tune(ivf, tune_queries, tune_truth, k=k, min_recall=0.95 + TUNE_MARGIN)
        build_s = time.perf_counter() - t
        ms, found = time_single(lambda q: ivf.search(q[None], k)[1][0], queries, k)
        record("faiss-ivf", ms, found,
               f"nlist {ivf.index.nlist}, nprobe {ivf.param}{'' if ok else ' (floor not reached)'}, "
               f"{exact_ms / ms:.1f}x exact", build_s, index_bytes("ivf", n, DIM) / 2**30)
        del ivf
        gc.collect()
    if n <= ARGS.hnsw_max and "hnsw" in METHODS:
        t = time.perf_counter()
        hnsw = build_hnsw(blocks)
        ok = tune(hnsw, tune_queries, tune_truth, k=k, min_recall=0.95 + TUNE_MARGIN)
        build_s = time.perf_counter() - t
        ms, found = time_single(lambda q: hnsw.search(q[None], k)[1][0], queries, k)
        record("faiss-hnsw", ms, found,
               f"M 32, efSearch {hnsw.param}{'' if ok else ' (floor not reached)'}, "
               f"{exact_ms / ms:.1f}x exact", build_s, index_bytes("hnsw", n, DIM) / 2**30)
        del hnsw
        gc.collect()
    return _finish(rows, folder, kind, n)


def _finish(rows: list[dict], folder: Path, kind: str, n: int) -> list[dict]:
    gc.collect()
    (folder / f"{kind}-{n}.npy").unlink()
    return rows


def log(message: str) -> None:
    print(f"# {time.strftime('%H:%M:%S')} {message}", flush=True)


def markdown(rows: list[dict]) -> str:
    lines = ["| size | dataset | method | median ms | recall@10 | build s | index GiB | note |",
             "|---:|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        build = "" if r["build_s"] is None else f"{r['build_s']:.1f}"
        index = "" if r["index_gib"] is None else f"{r['index_gib']:.2f}"
        lines.append(f"| {r['size']:,} | {r['dataset']} | {r['method']} | {r['median_ms']:.2f} | "
                     f"{r['recall@10']:.3f} | {build} | {index} | {r['note']} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100000,1000000,10000000", help="comma-separated row counts")
    p.add_argument("--datasets", default="clustered,isotropic", help="clustered,isotropic")
    p.add_argument("--queries", type=int, default=100, help="single queries timed per method")
    p.add_argument("--numpy-max", type=int, default=1_000_000,
                   help="largest size the plain NumPy baseline runs at (it is slow)")
    p.add_argument("--hnsw-max", type=int, default=1_000_000,
                   help="largest size HNSW is built at (building is slow on 2 cores)")
    p.add_argument("--flat-max-gb", type=float, default=11.0,
                   help="skip FAISS flat when its float32 copy needs more GiB than this")
    p.add_argument("--methods", default="exact,numpy,flat,ivf,hnsw",
                   help="which to run, of numpy,flat,ivf,ivfpq,ivfpq-cold,hnsw "
                        "(exact always runs: it is the baseline)")
    p.add_argument("--days", type=int, default=1,
                   help="split the vectors into this many shards, as nights write them "
                        "(365: a year)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp", default=None, help="folder for the temporary vectors (default: system temp)")
    p.add_argument("--json-out", default=None, help="also write the rows as JSON here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    global ARGS, METHODS
    ARGS = parse_args(argv)
    METHODS = set(ARGS.methods.split(","))
    k = 10
    log(f"{platform.machine()} {torch.get_num_threads()} torch threads, "
        f"{faiss.omp_get_max_threads()} faiss threads, faiss {faiss.__version__}")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(dir=ARGS.tmp, prefix="sleep-bench-") as tmp:
        for n in [int(s) for s in ARGS.sizes.split(",")]:
            for kind in ARGS.datasets.split(","):
                rows += run_one(n, kind, Path(tmp), k)
                if ARGS.json_out:
                    Path(ARGS.json_out).write_text(json.dumps(rows, indent=1))
    print(markdown(rows))
    return 0


ARGS: argparse.Namespace
METHODS: set[str] = set()

if __name__ == "__main__":
    sys.exit(main())
