"""Episodes and highlights of a day, as pure functions of arrays.

An *episode* is a run of clips whose embeddings stay alike: the day's clip vectors, in time
order, are cut where their distribution changes, by kernel change-point detection
(``ruptures.KernelCPD``, the exact dynamic programme with a penalty per cut; Arlot,
Celisse & Harchaoui, "A kernel multiple change-point algorithm via model selection",
JMLR 2019). A *highlight* is a clip that scores high on surprise (z-scores against the day,
:func:`zscores`), chosen so that the picks differ from each other (:func:`mmr`), each with
its reason in words (:func:`reasons`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

KERNELS = ("cosine", "rbf")
LOUDNESS_FLOOR_DB = 3.0  # loudness differences below this are not worth a word (nor a z-score)
LEADS = 0.5  # a component below this (in standard deviations) is no reason to name

# Words for each highlight component (the strongest one leads).
WORDS = {
    "prediction": "the models did not see it coming",
    "novelty": "unlike any earlier day",
}


def centred_unit(vectors: np.ndarray) -> np.ndarray:
    """Rows minus the mean row, scaled to unit length (zero rows stay zero).

    Why: mean-pooled ViT tokens share a large common direction, so raw cosines between
    unrelated scenes are high; without it the kernel sees everything as alike.
    """
    x = np.asarray(vectors, np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def change_points(vectors: np.ndarray, *, kernel: str = "cosine", penalty: float = 1.0,
                  min_size: int = 1) -> list[int]:
    """Where the day's clips change: the end index (exclusive) of every segment.

    Args:
        vectors: ``(N, D)`` clip embeddings in time order.
        kernel: ``"cosine"`` (on centred unit vectors) or ``"rbf"`` (on the same, with
            ruptures' median-heuristic bandwidth).
        penalty: the cost of one more cut (ruptures' ``pen``); with the cosine kernel a
            segment of n clips costs at most n, so a cut pays when it removes more than
            ``penalty`` clips' worth of dissimilarity.
        min_size: fewest clips per segment.
    Returns:
        sorted segment ends, the last one ``N`` (``[]`` for no clips, ``[1]`` for one).
    Raises:
        ValueError: an unknown kernel, a negative penalty, or vectors that are not 2-D.
    """
    import ruptures

    x = np.asarray(vectors, np.float64)
    if x.ndim != 2:
        raise ValueError(f"vectors: expected (N, D), got shape {x.shape}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel {kernel!r}: expected one of {', '.join(KERNELS)}")
    if penalty < 0:
        raise ValueError(f"penalty {penalty}: must be >= 0")
    n = len(x)
    min_size = max(1, int(min_size))
    if n < 2 * min_size:
        return [n] if n else []
    signal = centred_unit(x)
    if not np.any(signal):  # every clip the same: one episode
        return [n]
    algo = ruptures.KernelCPD(kernel=kernel, min_size=min_size).fit(signal)
    return [int(b) for b in algo.predict(pen=float(penalty))]


def segments(ends: Sequence[int]) -> list[tuple[int, int]]:
    """``[(start, end)]`` (end exclusive) from :func:`change_points`' segment ends."""
    starts = [0, *ends[:-1]]
    return list(zip(starts, ends))


def zscores(values: Sequence[float | None], min_std: float = 0.0) -> np.ndarray:
    """Each value's z-score against the others (NaN for ``None``; zeros when all are equal).

    ``min_std`` floors the spread, so that a day of nearly equal values (a steady hum
    measured to a hundredth of a dB) does not turn its tiny differences into large scores.
    """
    x = np.array([np.nan if v is None else float(v) for v in values], np.float64)
    known = x[~np.isnan(x)]
    if known.size == 0:
        return x
    std = max(float(known.std()), min_std)
    return (x - known.mean()) / std if std > 0 else np.where(np.isnan(x), np.nan, 0.0)


def mmr(scores: Sequence[float], vectors: np.ndarray, k: int, lam: float = 0.7) -> list[int]:
    """Maximal marginal relevance (Carbonell & Goldstein 1998): ``k`` indices, high score, unlike each other.

    Each pick maximises ``lam * relevance - (1 - lam) * max cosine to the picks so far``,
    relevance being the score scaled to [0, 1] over the candidates.

    Args:
        scores: ``(N,)`` how much each item deserves a place (NaN: never picked).
        vectors: ``(N, D)`` what the items look like.
        k: how many to pick (fewer when there are fewer items).
        lam: 1 ranks by score alone, 0 by diversity alone.
    Returns:
        picked indices, in the order picked.
    """
    s = np.asarray(scores, np.float64)
    candidates = [i for i in range(len(s)) if not np.isnan(s[i])]
    if not candidates or k <= 0:
        return []
    lo, hi = s[candidates].min(), s[candidates].max()
    relevance = (s - lo) / (hi - lo) if hi > lo else np.ones_like(s)
    x = np.asarray(vectors, np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = x / np.where(norms > 0, norms, 1.0)
    picked: list[int] = []
    closest = np.full(len(s), -np.inf)  # max cosine to a pick so far
    while candidates and len(picked) < k:
        penalty = np.where(np.isinf(closest), 0.0, closest)
        gain = lam * relevance[candidates] - (1 - lam) * penalty[candidates]
        best = candidates[int(np.argmax(gain))]
        picked.append(best)
        candidates.remove(best)
        closest = np.maximum(closest, unit @ unit[best])
    return picked


def highlight_scores(components: Mapping[str, Sequence[float]]) -> np.ndarray:
    """A clip's score: the sum of its known components (NaN where none is known)."""
    stacked = np.vstack([np.asarray(v, np.float64) for v in components.values()])
    known = ~np.isnan(stacked)
    total = np.where(known, stacked, 0.0).sum(axis=0)
    return np.where(known.any(axis=0), total, np.nan)


def loudness_words(i: int, loudness: Sequence[float | None]) -> str | None:
    """How clip ``i`` sounds against the day: ``"loudest moment"``, ``"quietest moment"``,
    louder or quieter than most of it (``None``: no sound, or within :data:`LOUDNESS_FLOOR_DB`
    of the day's mean level)."""
    levels = [v for v in loudness if v is not None]
    if loudness[i] is None or len(levels) < 2 or abs(loudness[i] - float(np.mean(levels))) < LOUDNESS_FLOOR_DB:
        return None
    if loudness[i] == max(levels):
        return "loudest moment"
    if loudness[i] == min(levels):
        return "quietest moment"
    return "louder than most of the day" if loudness[i] > float(np.mean(levels)) else "quieter than most of the day"


def reasons(i: int, components: Mapping[str, Sequence[float]], loudness: Sequence[float | None]) -> list[str]:
    """Why clip ``i`` is a highlight, in words, strongest first.

    Args:
        i: the clip's position in the day.
        components: per-clip scores by name: ``"prediction"`` and ``"novelty"`` (z-scores),
            ``"loudness"`` (how far from the day's usual level, either way); NaN: unknown.
        loudness: per-clip loudness in dBFS (``None``: no sound).
    Returns:
        the leading component's words (when at least :data:`LEADS`), then those of any other
        component at least one standard deviation out, then ``"loudest moment"`` / ``"quietest moment"`` when the
        clip is the day's extreme and that was not said yet.
    """
    known = {name: float(v[i]) for name, v in components.items() if not np.isnan(v[i])}
    ranked = sorted(known, key=lambda name: -known[name])
    words = {**WORDS, "loudness": loudness_words(i, loudness)}
    said = [words[ranked[0]]] if ranked and known[ranked[0]] >= LEADS else []
    said += [words[name] for name in ranked[1:] if known[name] >= 1.0]
    extreme = loudness_words(i, loudness)
    if extreme in ("loudest moment", "quietest moment"):
        said.append(extreme)
    said = list(dict.fromkeys(w for w in said if w))
    # Picked by maximal marginal relevance for being unlike the other picks, not for its score.
    return said or ["unlike the other highlights"]
