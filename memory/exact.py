"""Exact cosine top-k over stored vectors, in blocks, without loading the memory into RAM.

Shards hold L2-normalised float16 rows (:mod:`memory.shards`), so cosine similarity is a
dot product. NumPy has no fast float16 kernels (converting 1M x 256 to float32 costs
~0.3 s on 2 cores), so the matrix-vector product runs through torch, in the rows' own
dtype, on a zero-copy view of the same memory map (~15 ms for 1M rows). Its output is only
used to find candidates: every row within :data:`FP16_MARGIN` of the k-th best rough
score is rescored in float32, so the result equals a float32 search (ties aside). The
kernel takes whatever dtype a block holds; the margin is sized for float16, the coarsest.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable

import numpy as np

# Rounding a score in [-1, 1] to float16 errs by <= 2.5e-4, and rounding the query by as
# much again; 2e-3 leaves a wide safety factor while keeping the rescored set tiny.
FP16_MARGIN = 2e-3
CANDIDATE_SLACK = 54


@dataclass(frozen=True)
class Block:
    """A run of rows searched together.

    Args:
        offset: the global id of the first row (ids are ``offset + row``).
        vectors: ``(n, D)`` float16 or float32 (a memory map is fine).
        mask: optional ``(n,)`` bool; ``False`` rows are never returned.
    """

    offset: int
    vectors: np.ndarray
    mask: np.ndarray | None = None


def as_tensor(array: np.ndarray):
    """A torch view of ``array`` without a copy (read-only memory maps included)."""
    import torch

    with warnings.catch_warnings():
        # torch warns that it cannot mark read-only memory as such; nothing here writes to it.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def _merge(best_s: np.ndarray, best_i: np.ndarray, s: np.ndarray, i: np.ndarray, k: int):
    s = np.concatenate([best_s, s])
    i = np.concatenate([best_i, i])
    order = np.argsort(-s, kind="stable")[:k]
    return s[order], i[order]


def exact_topk(blocks: Iterable[Block], query: np.ndarray, k: int,
               chunk_rows: int = 262_144) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` cosine scores of one query.

    Args:
        blocks: the rows to search, see :class:`Block`.
        query: ``(D,)`` L2-normalised float32.
        k: how many results.
        chunk_rows: rows multiplied at once (bounds the float32 temporaries).
    Returns:
        ``(scores, ids)``: float32 and int64 arrays of length <= k, best first.
    """
    import torch  # here, not at the top: forget and doctor never pay for importing it

    q32 = torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32))
    best_s = np.empty(0, np.float32)
    best_i = np.empty(0, np.int64)
    for block in blocks:
        n = len(block.vectors)
        for start in range(0, n, chunk_rows):
            chunk = as_tensor(block.vectors[start:start + chunk_rows])
            rough = chunk @ q32.to(chunk.dtype)  # (n,) scores in the rows' dtype
            if block.mask is not None:
                keep = torch.from_numpy(block.mask[start:start + chunk_rows])
                rough.masked_fill_(~keep, -np.inf)
            # The k best rough scores plus some slack: enough candidates nearly always, and
            # far cheaper than comparing and compacting the whole chunk.
            values, candidates = torch.topk(rough, min(len(rough), k + CANDIDATE_SLACK))
            if len(values) == 0 or float(values[0]) == -np.inf:
                continue
            kth = float(values[min(k, len(values)) - 1])
            if len(best_s) == k:
                kth = max(kth, float(best_s[-1]))
            floor = kth - FP16_MARGIN
            if len(values) < len(rough) and float(values[-1]) >= floor:
                # More near-ties than slack (a wall of near-duplicates): take them all.
                candidates = torch.nonzero(rough >= floor).squeeze(1)
            else:
                candidates = candidates[values >= max(floor, -6e4)]
            if len(candidates) == 0:
                continue
            exact = (chunk[candidates].float() @ q32).numpy()
            ids = candidates.numpy().astype(np.int64) + block.offset + start
            best_s, best_i = _merge(best_s, best_i, exact, ids, k)
    return best_s, best_i


def exact_topk_batch(blocks: Iterable[Block], queries: np.ndarray, k: int,
                     chunk_rows: int = 131_072) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` for many queries at once, all in float32 (ground truth for recall).

    Args:
        blocks: the rows to search (masks honoured).
        queries: ``(Q, D)`` L2-normalised float32.
        k: how many results per query.
    Returns:
        ``(scores, ids)`` of shape ``(Q, k)``, best first; ids ``-1`` where fewer rows exist.
    """
    import torch

    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).T  # (D, Q)
    nq = q.shape[1]
    best_s = torch.full((nq, k), -np.inf)
    best_i = torch.full((nq, k), -1, dtype=torch.int64)
    for block in blocks:
        n = len(block.vectors)
        for start in range(0, n, chunk_rows):
            chunk = as_tensor(block.vectors[start:start + chunk_rows]).float()
            scores = (chunk @ q).T  # (Q, n)
            if block.mask is not None:
                keep = torch.from_numpy(block.mask[start:start + chunk_rows])
                scores.masked_fill_(~keep.unsqueeze(0), -np.inf)
            kk = min(k, scores.shape[1])
            s, i = torch.topk(scores, kk, dim=1)
            i = i + block.offset + start
            all_s = torch.cat([best_s, s], dim=1)
            all_i = torch.cat([best_i, i], dim=1)
            best_s, idx = torch.topk(all_s, k, dim=1)
            best_i = torch.gather(all_i, 1, idx)
    best_i[best_s == -np.inf] = -1
    return best_s.numpy(), best_i.numpy()


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true top-k ids that ``found`` contains.

    Args:
        found: ``(Q, k)`` ids from the method under test (``-1`` for none).
        truth: ``(Q, k)`` ids from exact search.
    """
    hits = 0
    total = 0
    for f, t in zip(found, truth):
        t = t[t >= 0]
        hits += len(set(f.tolist()) & set(t.tolist()))
        total += len(t)
    return hits / total if total else 1.0
