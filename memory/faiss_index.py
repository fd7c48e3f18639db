"""FAISS indexes over one model version's vectors: exact flat, or IVF/HNSW held to a recall floor.

An approximate index is only used where it keeps recall@10 >= ``min_recall``: when it is
built, its search parameter (``nprobe`` for IVF, ``efSearch`` for HNSW) is raised step by
step until recall@10 against exact search, on queries drawn from the memory itself (stored
vectors plus a little noise: "moments like this one"), reaches the floor. The chosen value
and the recall it measured are kept with the index. If no value reaches the floor the
exact flat index is used instead, so a badly clustered memory costs time, never recall.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

import faiss
import numpy as np

from memory.exact import Block, exact_topk_batch, recall_at_k

log = logging.getLogger(__name__)

KINDS = ("flat", "ivf", "hnsw")
IVF_NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
HNSW_EFS = (16, 32, 64, 128, 256, 512, 1024, 2048)
ADD_CHUNK = 262_144
HNSW_QUANTIZER_FROM = 4096
# Tuned on 200 queries, recall on unseen ones came out up to 0.01 lower (bench: HNSW tuned
# to 0.95 measured 0.941), so tuning aims this much above the floor.
TUNE_MARGIN = 0.02


@dataclass
class TunedIndex:
    """A FAISS index with its tuned search parameter.

    Attributes:
        index: the FAISS index; ids are global row numbers.
        kind: ``flat``, ``ivf`` or ``hnsw``.
        param: ``nprobe`` (ivf) or ``efSearch`` (hnsw); ``None`` for flat.
        recall: recall@10 measured when tuned; ``None`` for flat (exact).
    """

    index: faiss.Index
    kind: str
    param: int | None = None
    recall: float | None = None
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
        if self.kind == "ivf":
            params = faiss.SearchParametersIVF(sel=sel, nprobe=self.param)
        elif self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=self.param)
        else:
            params = faiss.SearchParameters(sel=sel) if sel is not None else None
        scores, ids = self.index.search(queries, k, params=params)
        return scores, ids


def _chunks(blocks: Sequence[Block]):
    for block in blocks:
        for start in range(0, len(block.vectors), ADD_CHUNK):
            yield np.ascontiguousarray(block.vectors[start:start + ADD_CHUNK], dtype=np.float32)


def total_rows(blocks: Sequence[Block]) -> int:
    return sum(len(b.vectors) for b in blocks)


def gather_rows(blocks: Sequence[Block], ids: np.ndarray) -> np.ndarray:
    """Rows ``ids`` (global, sorted or not) as float32 ``(len(ids), D)``."""
    out = np.empty((len(ids), blocks[0].vectors.shape[1]), np.float32)
    order = np.argsort(ids)
    sorted_ids = ids[order]
    for block in blocks:
        lo, hi = np.searchsorted(sorted_ids, [block.offset, block.offset + len(block.vectors)])
        if hi > lo:
            out[order[lo:hi]] = block.vectors[sorted_ids[lo:hi] - block.offset]
    return out


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


def build_flat(blocks: Sequence[Block]) -> TunedIndex:
    """Exact inner-product index (float32 copy of every vector)."""
    index = faiss.IndexFlatIP(blocks[0].vectors.shape[1])
    for chunk in _chunks(blocks):
        index.add(chunk)
    return TunedIndex(index, "flat")


def build_ivf(blocks: Sequence[Block], *, nlist: int | None = None, train_rows: int = 200_000,
              seed: int = 0) -> TunedIndex:
    """IVF with float16 storage (the shards' own precision, half the RAM of float32)."""
    total = total_rows(blocks)
    dim = blocks[0].vectors.shape[1]
    nlist = nlist or default_nlist(total)
    rng = np.random.default_rng(seed)
    # k-means cost is rows x lists x iterations: 16 rows a list is below FAISS's advice (39)
    # but coarse lists only need to split the space, and recall is measured afterwards anyway.
    train = gather_rows(blocks, rng.choice(total, size=min(total, max(train_rows, 16 * nlist)),
                                           replace=False))
    if nlist >= HNSW_QUANTIZER_FROM:
        # Assigning 10M rows to 12k lists by brute force takes longer than the rest of the
        # build together; a small HNSW graph over the centroids does it in a fraction.
        quantizer = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        quantizer.hnsw.efSearch = 128
    else:
        quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16,
                                          faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10  # enough for coarse lists; training is the slow part of a build
    index.cp.seed = seed
    index.train(train)
    for chunk in _chunks(blocks):
        index.add(chunk)
    return TunedIndex(index, "ivf", param=1, _keep=[quantizer])


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
        built: an ``ivf`` or ``hnsw`` index.
        queries: ``(Q, D)`` float32 tuning queries.
        truth: ``(Q, k)`` exact ids for them.
    Returns:
        whether the floor was reached (``built.param``/``recall`` hold the best tried).
    """
    if built.kind == "ivf":
        values = [v for v in IVF_NPROBES if v <= built.index.nlist] or [built.index.nlist]
        if values[-1] != built.index.nlist:
            values.append(built.index.nlist)
    else:
        values = list(HNSW_EFS)
    for value in values:
        built.param = value
        _, found = built.search(queries, k)
        built.recall = recall_at_k(found, truth)
        log.debug("%s param %d: recall@%d %.3f", built.kind, value, k, built.recall)
        if built.recall >= min_recall:
            return True
    return False


def build_index(blocks: Sequence[Block], kind: str, *, min_recall: float = 0.95, k: int = 10,
                n_tune: int = 200, seed: int = 0, fallback_flat: bool = True) -> TunedIndex | None:
    """Build ``kind`` over ``blocks`` (ids = ``offset + row``), tuned to ``min_recall``.

    Args:
        blocks: the version's rows, offsets contiguous from 0 (masks ignored).
        kind: ``flat``, ``ivf`` or ``hnsw``.
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
    built = build_ivf(blocks, seed=seed) if kind == "ivf" else build_hnsw(blocks)
    queries = sample_queries(blocks, n_tune, seed=seed + 1)
    _, truth = exact_topk_batch(blocks, queries, k)
    reached = tune(built, queries, truth, k=k, min_recall=min(1.0, min_recall + TUNE_MARGIN))
    if reached and not (built.kind == "ivf" and built.param * 2 > built.index.nlist):
        log.info("%s index over %d rows: param %d gives recall@%d %.3f", kind, built.ntotal,
                 built.param, k, built.recall)
        return built
    log.warning("%s index over %d rows: recall@%d %.3f needs param %d; using exact search",
                kind, built.ntotal, k, built.recall, built.param)
    return build_flat(blocks) if fallback_flat else None
