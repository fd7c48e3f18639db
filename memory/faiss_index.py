"""FAISS indexes over one model version's vectors: exact flat, or IVF/IVF-PQ/HNSW held to a recall floor.

An approximate index is only used where it keeps recall@10 >= ``min_recall``: when it is
built, its search parameter (``nprobe`` for IVF, ``efSearch`` for HNSW) is raised step by
step until recall@10 against exact search, on queries drawn from the memory itself (stored
vectors plus a little noise: "moments like this one"), reaches the floor. The chosen value
and the recall it measured are kept with the index. If no value reaches the floor the
exact flat index is used instead, so a badly clustered memory costs time, never recall.

IVF-PQ is for a memory whose vectors do not fit in RAM: the index keeps a 1-byte code per
2 dimensions (4x smaller than the shards' float16), and the top ``rerank_factor x k`` of
its candidates are re-scored exactly against the float16 rows read from the shards' memory
maps. Codes alone order a moment's near-duplicate frames poorly (1M clustered bench
vectors, 8 lists probed: recall@10 0.81 from the codes' best 10, 0.99 after re-ranking
their best 50), so tuning picks the number of lists probed and the re-rank factor together.
"""
from __future__ import annotations

import logging
import math
import mmap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import faiss
import numpy as np

from memory.exact import Block, exact_topk_batch, recall_at_k

log = logging.getLogger(__name__)

KINDS = ("flat", "ivf", "ivfpq", "hnsw")
IVF_NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
HNSW_EFS = (16, 32, 64, 128, 256, 512, 1024, 2048)
ADD_CHUNK = 262_144
HNSW_QUANTIZER_FROM = 4096
# IVF-PQ: one 8-bit code per 2 dimensions (128 bytes for 256-d, 2.7 GiB for a year's 21M).
# With 64 bytes the codes barely order near-duplicates: on 1M clustered bench vectors
# recall@10 0.99 needed 500 rows re-ranked per query, against 50 with 128 bytes.
PQ_DIMS_PER_CODE = 2
PQ_NBITS = 8
# Candidates re-ranked per result, tried in this order; 50 x 10 = 500 rows read per query at most.
RERANK_FACTORS = (1, 2, 5, 10, 20, 50)
# PQ's k-means needs 2**PQ_NBITS centroids per sub-quantizer from a few rows each.
PQ_MIN_ROWS = 4 * 2**PQ_NBITS
# Tuned on 200 queries, recall on unseen ones came out up to 0.01 lower (bench: HNSW tuned
# to 0.95 measured 0.941), so tuning aims this much above the floor.
TUNE_MARGIN = 0.02


@dataclass
class TunedIndex:
    """A FAISS index with its tuned search parameter.

    Attributes:
        index: the FAISS index; ids are global row numbers.
        kind: ``flat``, ``ivf``, ``ivfpq`` or ``hnsw``.
        param: ``nprobe`` (ivf, ivfpq) or ``efSearch`` (hnsw); ``None`` for flat.
        recall: recall@10 measured when tuned; ``None`` for flat (exact).
        rerank_factor: ivfpq only: ``rerank_factor x k`` candidates are re-scored exactly.
        rows: ivfpq only: the blocks the index was built over (memory maps; a sealed shard's
            :class:`memory.shards.SealedRows`, which decrypts the rows it is asked for), read
            to re-rank.
        check_rows: ivfpq only: called with the global ids of the rows a re-ranking is about
            to read, before it reads them (the search checks their blocks' checksums there);
            it raises to refuse them.
    """

    index: faiss.Index
    kind: str
    param: int | None = None
    recall: float | None = None
    rerank_factor: int | None = None
    rows: Sequence[Block] | None = field(default=None, repr=False)
    check_rows: Callable[[np.ndarray], None] | None = field(default=None, repr=False)
    _keep: list = field(default_factory=list, repr=False)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` inner products.

        Args:
            queries: ``(Q, D)`` float32, L2-normalised.
            k: results per query.
            allowed: optional ``(ntotal,)`` bool; only these rows may be returned.
        Returns:
            ``(scores, ids)`` of shape ``(Q, k)``; ids ``-1`` where nothing was found.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        sel = None
        if allowed is not None:
            bits = np.packbits(allowed.astype(bool), bitorder="little")
            sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
        if self.kind in ("ivf", "ivfpq"):
            params = faiss.SearchParametersIVF(sel=sel, nprobe=self.param)
        elif self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=self.param)
        else:
            params = faiss.SearchParameters(sel=sel) if sel is not None else None
        if self.kind == "ivfpq":
            _, candidates = self.index.search(queries, k * self.rerank_factor, params=params)
            return self.rerank(queries, candidates, k)
        scores, ids = self.index.search(queries, k, params=params)
        return scores, ids

    def rerank(self, queries: np.ndarray, candidates: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best of each query's ``candidates`` by exact inner product with the stored rows.

        Args:
            queries: ``(Q, D)`` float32.
            candidates: ``(Q, C)`` global ids, ``-1`` for none.
        Returns:
            ``(scores, ids)`` of shape ``(Q, k)``, best first; ids ``-1`` where fewer were found.
        """
        valid = candidates >= 0
        which_query = np.nonzero(valid)[0]
        if self.check_rows is not None:
            self.check_rows(candidates[valid])
        # (V, D): only these rows are read, from disk where the memory is larger than RAM.
        rows = gather_rows(self.rows, candidates[valid], prefetch=True)
        scores = np.full(candidates.shape, -np.inf, np.float32)
        scores[valid] = np.einsum("vd,vd->v", rows, queries[which_query])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(scores, order, axis=1)
        best_i = np.where(np.isfinite(best_s), np.take_along_axis(candidates, order, axis=1), -1)
        if best_s.shape[1] < k:  # fewer candidates than k (a tiny memory)
            pad = k - best_s.shape[1]
            best_s = np.pad(best_s, ((0, 0), (0, pad)), constant_values=-np.inf)
            best_i = np.pad(best_i, ((0, 0), (0, pad)), constant_values=-1)
        return best_s, best_i


def _chunks(blocks: Sequence[Block]):
    for block in blocks:
        for start in range(0, len(block.vectors), ADD_CHUNK):
            yield np.ascontiguousarray(block.vectors[start:start + ADD_CHUNK], dtype=np.float32)


def total_rows(blocks: Sequence[Block]) -> int:
    return sum(len(b.vectors) for b in blocks)


def gather_rows(blocks: Sequence[Block], ids: np.ndarray, *, prefetch: bool = False) -> np.ndarray:
    """Rows ``ids`` (global, sorted or not, repeats allowed) as float32 ``(len(ids), D)``.

    ``blocks`` are in offset order (a version's shards, one a day); only those holding some
    of ``ids`` are touched. With ``prefetch`` the rows of memory-mapped blocks are first
    asked of the kernel all at once (:func:`_will_need`): for a few hundred scattered rows
    of a memory larger than RAM.
    """
    out = np.empty((len(ids), blocks[0].vectors.shape[1]), np.float32)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.fromiter((b.offset for b in blocks), np.int64, len(blocks))
    which = np.searchsorted(starts, sorted_ids, side="right") - 1
    edges = [0, *(np.flatnonzero(np.diff(which)) + 1), len(ids)]
    runs = [(blocks[which[lo]], lo, hi) for lo, hi in pairwise(edges) if hi > lo]
    if prefetch:
        for block, lo, hi in runs:
            _will_need(block, sorted_ids[lo:hi])
    for block, lo, hi in runs:
        out[order[lo:hi]] = block.vectors[sorted_ids[lo:hi] - block.offset]
    return out


def _will_need(block: Block, ids: np.ndarray) -> None:
    """``MADV_WILLNEED`` on the pages of rows ``ids`` (global) of a memory-mapped block.

    Faulting scattered rows in one by one reads them one at a time, each with ~128 KiB of
    read-ahead around it: 200 random rows of an evicted 1 GB file took 790 ms. Asking for
    every row's pages first queues the reads together: 2.4 ms. Not a memory map: nothing.
    """
    vectors = block.vectors
    mapped = getattr(vectors, "_mmap", None)  # np.memmap's own mapping (views share it)
    if mapped is None or not vectors.flags.c_contiguous or not hasattr(mmap, "MADV_WILLNEED"):
        return
    row_bytes = vectors.strides[0]
    first = vectors.ctypes.data - np.frombuffer(mapped, np.uint8).ctypes.data
    for row in (ids - block.offset).tolist():
        at = first + row * row_bytes
        page = at - at % mmap.PAGESIZE
        mapped.madvise(mmap.MADV_WILLNEED, page, at + row_bytes - page)


def sample_queries(blocks: Sequence[Block], n: int, *, noise: float = 0.05,
                   seed: int = 0) -> np.ndarray:
    """``n`` queries like real ones: stored vectors moved by a little Gaussian noise."""
    rng = np.random.default_rng(seed)
    total = total_rows(blocks)
    picked = gather_rows(blocks, rng.choice(total, size=min(n, total), replace=False))
    picked += rng.normal(scale=noise / math.sqrt(picked.shape[1]), size=picked.shape).astype(np.float32)
    return picked / np.linalg.norm(picked, axis=1, keepdims=True)


def default_nlist(n: int) -> int:
    """About ``4 sqrt(N)`` lists, but at least 39 training rows per list (FAISS's floor)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def pq_codes(dim: int) -> int:
    """Sub-quantizers (bytes a vector) of IVF-PQ: one per :data:`PQ_DIMS_PER_CODE` dimensions,
    rounded down to a divisor of ``dim`` (FAISS splits the vector evenly)."""
    m = max(1, dim // PQ_DIMS_PER_CODE)
    while dim % m:
        m -= 1
    return m


def index_bytes(kind: str, rows: int, dim: int) -> int:
    """RAM an index of ``kind`` over ``rows`` vectors takes (codes, ids, centroids; estimate).

    What :mod:`memory.search` weighs against ``memory.search.index_ram_gb`` before building.
    """
    nlist = default_nlist(rows)
    if kind == "flat":
        return rows * dim * 4
    if kind == "ivf":
        return rows * (2 * dim + 8) + nlist * dim * 4
    if kind == "ivfpq":
        return rows * (pq_codes(dim) + 8) + nlist * dim * 4 + dim * 2**PQ_NBITS * 4
    if kind == "hnsw":
        return rows * (2 * dim + 2 * 32 * 4)  # float16 rows and M=32 links (x2 on level 0)
    raise ValueError(f"unknown index kind {kind!r}; expected one of {KINDS}")


def _training_sample(blocks: Sequence[Block], nlist: int, train_rows: int,
                     rng: np.random.Generator) -> np.ndarray:
    # k-means cost is rows x lists x iterations: 16 rows a list is below FAISS's advice (39)
    # but coarse lists only need to split the space, and recall is measured afterwards anyway.
    total = total_rows(blocks)
    return gather_rows(blocks, rng.choice(total, size=min(total, max(train_rows, 16 * nlist)),
                                          replace=False))


def _coarse_quantizer(dim: int, nlist: int) -> faiss.Index:
    if nlist >= HNSW_QUANTIZER_FROM:
        # Assigning 10M rows to 12k lists by brute force takes longer than the rest of the
        # build together; a small HNSW graph over the centroids does it in a fraction.
        quantizer = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        quantizer.hnsw.efSearch = 128
        return quantizer
    return faiss.IndexFlatIP(dim)


def build_flat(blocks: Sequence[Block]) -> TunedIndex:
    """Exact inner-product index (float32 copy of every vector)."""
    index = faiss.IndexFlatIP(blocks[0].vectors.shape[1])
    for chunk in _chunks(blocks):
        index.add(chunk)
    return TunedIndex(index, "flat")


def build_ivf(blocks: Sequence[Block], *, nlist: int | None = None, train_rows: int = 200_000,
              seed: int = 0) -> TunedIndex:
    """IVF with float16 storage (the shards' own precision, half the RAM of float32)."""
    dim = blocks[0].vectors.shape[1]
    nlist = nlist or default_nlist(total_rows(blocks))
    train = _training_sample(blocks, nlist, train_rows, np.random.default_rng(seed))
    quantizer = _coarse_quantizer(dim, nlist)
    index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16,
                                          faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10  # enough for coarse lists; training is the slow part of a build
    index.cp.seed = seed
    index.train(train)
    for chunk in _chunks(blocks):
        index.add(chunk)
    return TunedIndex(index, "ivf", param=1, _keep=[quantizer])


def build_ivfpq(blocks: Sequence[Block], *, nlist: int | None = None, train_rows: int = 200_000,
                seed: int = 0) -> TunedIndex:
    """IVF-PQ codes in RAM, re-ranked against ``blocks`` (kept as memory maps, never loaded).

    Trained on a sample; rows are added a chunk at a time, so the float vectors are never
    all in memory.
    """
    dim = blocks[0].vectors.shape[1]
    nlist = nlist or default_nlist(total_rows(blocks))
    train = _training_sample(blocks, nlist, train_rows, np.random.default_rng(seed))
    quantizer = _coarse_quantizer(dim, nlist)
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_codes(dim), PQ_NBITS,
                             faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10
    index.cp.seed = seed
    index.pq.cp.seed = seed
    index.train(train)
    del train
    for chunk in _chunks(blocks):
        index.add(chunk)
    return TunedIndex(index, "ivfpq", param=1, rerank_factor=RERANK_FACTORS[-1], rows=blocks,
                      _keep=[quantizer])


def build_hnsw(blocks: Sequence[Block], *, m: int = 32, ef_construction: int = 80) -> TunedIndex:
    """HNSW graph over float16-stored vectors."""
    dim = blocks[0].vectors.shape[1]
    index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.train(np.ascontiguousarray(blocks[0].vectors[:1000], dtype=np.float32))
    for chunk in _chunks(blocks):
        index.add(chunk)
    return TunedIndex(index, "hnsw", param=16)


def tune(built: TunedIndex, queries: np.ndarray, truth: np.ndarray, *, k: int = 10,
         min_recall: float = 0.95) -> bool:
    """Set ``built.param`` to the cheapest value whose recall@k reaches ``min_recall``.

    Args:
        built: an ``ivf``, ``ivfpq`` or ``hnsw`` index.
        queries: ``(Q, D)`` float32 tuning queries.
        truth: ``(Q, k)`` exact ids for them.
    Returns:
        whether the floor was reached (``built.param``/``recall`` hold the best tried).
    """
    if built.kind == "ivfpq":
        return _tune_ivfpq(built, queries, truth, k=k, min_recall=min_recall)
    values = _nprobes(built.index.nlist) if built.kind == "ivf" else list(HNSW_EFS)
    for value in values:
        built.param = value
        _, found = built.search(queries, k)
        built.recall = recall_at_k(found, truth)
        log.debug("%s param %d: recall@%d %.3f", built.kind, value, k, built.recall)
        if built.recall >= min_recall:
            return True
    return False


def _nprobes(nlist: int) -> list[int]:
    values = [v for v in IVF_NPROBES if v <= nlist] or [nlist]
    return values if values[-1] == nlist else [*values, nlist]


def _tune_ivfpq(built: TunedIndex, queries: np.ndarray, truth: np.ndarray, *, k: int,
                min_recall: float) -> bool:
    """Set ``nprobe`` and ``rerank_factor`` of an ``ivfpq`` index (see :func:`tune`).

    For each ``nprobe`` the smallest re-rank factor that reaches ``min_recall`` is found on
    one search (a smaller factor re-ranks a prefix of the same candidate list). The first
    ``nprobe`` that reaches it and the next one are compared, and the one reading fewer
    rows wins: scanning twice the codes costs less than reading more rows from the shards.
    """
    best = None  # (rerank_factor, nprobe, recall)
    nlist = built.index.nlist
    for nprobe in _nprobes(nlist):
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        _, candidates = built.index.search(queries, k * RERANK_FACTORS[-1], params=params)
        for factor in RERANK_FACTORS:
            _, found = built.rerank(queries, candidates[:, :k * factor], k)
            recall = recall_at_k(found, truth)
            if recall >= min_recall:
                break
        log.debug("ivfpq nprobe %d, rerank %d: recall@%d %.3f", nprobe, factor, k, recall)
        if best is None:
            built.param, built.rerank_factor, built.recall = nprobe, factor, recall
            if recall >= min_recall:
                best = (factor, nprobe, recall)
                # Try the next nprobe unless nothing is cheaper or it would probe half the lists.
                if factor == RERANK_FACTORS[0] or nprobe * 4 > nlist:
                    break
            continue
        if recall >= min_recall and factor < best[0]:
            best = (factor, nprobe, recall)
        break
    if best is None:
        return False
    built.rerank_factor, built.param, built.recall = best
    return True


def build_index(blocks: Sequence[Block], kind: str, *, min_recall: float = 0.95, k: int = 10,
                n_tune: int = 200, seed: int = 0, fallback_flat: bool = True) -> TunedIndex | None:
    """Build ``kind`` over ``blocks`` (ids = ``offset + row``), tuned to ``min_recall``.

    Args:
        blocks: the version's rows, offsets contiguous from 0 (masks ignored); an ``ivfpq``
            index keeps them to re-rank from.
        kind: ``flat``, ``ivf``, ``ivfpq`` or ``hnsw``.
        min_recall: recall@k an approximate index must reach, else flat is returned.
        n_tune: tuning queries drawn from the memory.
        fallback_flat: where the approximate index misses the floor, or only reaches it by
            probing half of its lists or more (no faster than a full scan), return a flat
            index; with ``False`` return ``None`` (the caller searches exactly itself).
    Returns:
        the :class:`TunedIndex`, or ``None`` (see ``fallback_flat``).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {KINDS}")
    if kind == "flat":
        return build_flat(blocks)
    if kind == "ivfpq" and total_rows(blocks) < PQ_MIN_ROWS:
        log.warning("ivfpq index over %d rows: too few to train its codes; using exact search",
                    total_rows(blocks))
        return build_flat(blocks) if fallback_flat else None
    builders = {"ivf": build_ivf, "ivfpq": build_ivfpq}
    built = builders[kind](blocks, seed=seed) if kind in builders else build_hnsw(blocks)
    queries = sample_queries(blocks, n_tune, seed=seed + 1)
    _, truth = exact_topk_batch(blocks, queries, k)
    reached = tune(built, queries, truth, k=k, min_recall=min(1.0, min_recall + TUNE_MARGIN))
    if reached and not (built.kind in ("ivf", "ivfpq") and built.param * 2 > built.index.nlist):
        log.info("%s index over %d rows: param %d%s gives recall@%d %.3f", kind, built.ntotal,
                 built.param, f", re-ranking {built.rerank_factor}x" if built.rerank_factor else "",
                 k, built.recall)
        return built
    log.warning("%s index over %d rows: recall@%d %.3f needs param %d; using exact search",
                kind, built.ntotal, k, built.recall, built.param)
    return build_flat(blocks) if fallback_flat else None
