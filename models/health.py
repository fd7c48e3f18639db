"""Is the vision encoder learning? Embedding spread, effective rank, same-clip retrieval."""
from __future__ import annotations

import numpy as np


def embedding_std(vectors: np.ndarray) -> float:
    """Mean over dimensions of the per-dimension standard deviation of L2-normalised vectors.

    A collapsed encoder (every frame the same vector) gives 0; well-spread unit vectors
    give about ``1 / sqrt(dim)``.
    """
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return float(unit.std(axis=0).mean()) if len(unit) > 1 else 0.0


def effective_rank(vectors: np.ndarray) -> float:
    """Effective rank (RankMe, Garrido et al. 2023) of centred embeddings.

    ``exp(entropy(p))`` with ``p`` the singular values normalised to sum to 1: the number
    of directions the embeddings really use, between 1 and ``min(N, dim)``.
    """
    if len(vectors) < 2:
        return 0.0
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    s = np.linalg.svd(centred.astype(np.float64), compute_uv=False)
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def same_source_retrieval(vectors: np.ndarray, groups: np.ndarray, queries: np.ndarray) -> float:
    """Share of query frames whose nearest other frame (cosine) belongs to the same group.

    Args:
        vectors: ``(N, D)`` embeddings of every frame.
        groups: ``(N,)`` group of each frame (its clip).
        queries: positions of the held-out frames used as queries.
    Returns:
        the share in ``[0, 1]``; 0 when there are no queries.
    """
    if len(queries) == 0 or len(vectors) < 2:
        return 0.0
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sims = unit[queries] @ unit.T  # (Q, N)
    sims[np.arange(len(queries)), queries] = -np.inf  # a frame is not its own neighbour
    nearest = sims.argmax(axis=1)
    return float((groups[nearest] == groups[queries]).mean())


def rank_floor(dim: int, n: int, share: float) -> float:
    """The collapse-warning threshold: ``share`` of the rank the embeddings could reach.

    With fewer frames than dimensions the rank cannot exceed ``n - 1`` (centred), so the
    floor is taken of ``min(dim, n - 1)``; otherwise a small day would always warn.
    """
    return share * max(1, min(dim, n - 1))
