"""Retrieval figures: recall@k and median rank of the true partner (cross-modal), a query's own
clip among the clips, and how well PCA-compressed vectors keep their nearest neighbours."""
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


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def own_clip_recall(queries: np.ndarray, clips: np.ndarray, targets: np.ndarray, clean: np.ndarray) -> dict:
    """R@1 and R@5 of each query's own clip (``targets``: rows of ``clips``) by cosine, and its
    mean cosine to the clean frame's embedding ``clean`` (row by row).

    Returns:
        ``{"top1", "top5", "cosine"}``; ties count against the query.
    """
    sims = _unit(queries) @ _unit(clips).T
    own = sims[np.arange(len(sims)), targets][:, None]
    rank = (sims > own).sum(axis=1) + 1
    return {"top1": round(float((rank <= 1).mean()), 4), "top5": round(float((rank <= 5).mean()), 4),
            "cosine": round(float((_unit(queries) * _unit(clean)).sum(axis=1).mean()), 4)}


def nearest(vectors: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """``(N, k)`` rows of each vector's ``k`` nearest others by cosine (itself excluded), as sets."""
    x = _unit(vectors)
    out = np.empty((len(x), k), dtype=np.int64)
    for start in range(0, len(x), chunk):
        sims = x[start:start + chunk] @ x.T  # (C, N)
        sims[np.arange(len(sims)), np.arange(start, start + len(sims))] = -np.inf
        out[start:start + len(sims)] = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return out


def pca_knn_agreement(vectors: np.ndarray, dims: list[int], k: int = 10) -> dict:
    """How well vectors compressed by PCA keep their nearest neighbours.

    PCA is fitted on ``vectors`` themselves (an SVD of the centred rows); each is stored as its
    first ``d`` coordinates, decompressed (mean plus those coordinates on the components) and
    searched by cosine among the others, as the memory searches.

    Args:
        vectors: ``(N, D)``, N >= 2.
        dims: sizes to compress to; one at or above ``min(N, D)`` keeps the vectors whole.
        k: neighbours compared (at most ``N - 1``).
    Returns:
        ``{"vectors", "dim", "k", "sizes": [{"dim", "agreement", "variance_kept"}, ...]}``, one
        entry per size in ``dims`` order; ``agreement`` is the mean over vectors of the share of
        their ``k`` nearest neighbours found both with the original and the compressed vectors.
    Raises:
        ValueError: fewer than two vectors.
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need at least two vectors, got shape {x.shape}")
    k = min(k, len(x) - 1)
    mean = x.mean(axis=0)
    _, singular, components = np.linalg.svd(x - mean, full_matrices=False)  # (r,), (r, D)
    variance = singular ** 2
    reference = nearest(x, k)
    sizes = []
    for d in dims:
        basis = components[:min(d, len(components))]
        restored = mean + ((x - mean) @ basis.T) @ basis
        found = nearest(restored, k)
        shared = (reference[:, :, None] == found[:, None, :]).any(axis=2).sum(axis=1)
        sizes.append({"dim": int(d), "agreement": round(float(shared.mean() / k), 4),
                      "variance_kept": round(float(variance[:len(basis)].sum() / max(variance.sum(), 1e-30)), 4)})
    return {"vectors": len(x), "dim": int(x.shape[1]), "k": int(k), "sizes": sizes}
