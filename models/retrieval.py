"""Cross-modal retrieval figures: recall@k and median rank of the true partner, with chance."""
from __future__ import annotations

import numpy as np

KS = (1, 5, 10)


def ranks_of_partners(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """1-based rank of ``gallery[i]`` among all of ``gallery`` for ``queries[i]`` (cosine).

    Args:
        queries, gallery: ``(M, D)``; row i of each belongs to the same clip.
    Returns:
        ``(M,)`` ints; ties count against the query (a constant embedding ranks last).
    """
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    g = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)
    sims = q @ g.T                                      # (M, M)
    true = np.diag(sims)[:, None]
    return (sims >= true).sum(axis=1)                   # the partner itself counts once


def retrieval_metrics(queries: np.ndarray, gallery: np.ndarray) -> dict:
    """Recall@1/5/10 and median rank of each query's partner, and the same at chance.

    Returns:
        ``{"n", "recall@1", "recall@5", "recall@10", "median_rank", "chance": {...}}``;
        chance is what random embeddings give on average: recall@k = min(k, M) / M and
        median rank (M + 1) / 2.
    """
    m = len(queries)
    if m == 0:
        raise ValueError("no pairs to measure")
    ranks = ranks_of_partners(queries, gallery)
    out: dict = {"n": int(m)}
    for k in KS:
        out[f"recall@{k}"] = float((ranks <= k).mean())
    out["median_rank"] = float(np.median(ranks))
    out["chance"] = {**{f"recall@{k}": min(k, m) / m for k in KS}, "median_rank": (m + 1) / 2}
    return out
