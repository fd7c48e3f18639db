"""A linear map from one night's embedding space to an earlier night's.

Every night the encoders learn, so tonight's vectors live in another space than the last
version that covers the whole memory. Re-embedding every earlier clip fixes that for good
but takes time; until it is done, a query embedded by tonight's encoder reaches the older
vectors through a map fitted on clips that both versions embed (their keyframes, embedded
tonight, paired with the vectors stored last time).

Both sides are standardised per dimension before the fit (and the map undoes it on the
way out): the encoders' vectors share a large common direction, and what tells one moment
from another sits in small deviations from it, which an unstandardised fit shrinks away.
Two maps, both closed-form on the standardised data:

- ridge: ``W = argmin |X W - Y|^2 + alpha |W|^2``, any dimensions;
- orthogonal Procrustes: ``W = U V^T`` from the SVD of ``X^T Y``, a rotation (Schönemann
  1966), only when both spaces have the same dimension; it cannot overfit a small fit set.

:func:`fit_space_map` fits both, measures each on held-out pairs, and keeps the better.
Arrays in, arrays out: the caller stores the map and says which versions it joins.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

KINDS = ("ridge", "procrustes")


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class SpaceMap:
    """``y = normalise(((x - x_mean) / x_std) @ weight * y_std + y_mean)``: tonight's
    vectors into an older space."""

    kind: str
    weight: np.ndarray  # (D_new, D_old)
    x_mean: np.ndarray  # (D_new,)
    x_std: np.ndarray  # (D_new,)
    y_mean: np.ndarray  # (D_old,)
    y_std: np.ndarray  # (D_old,)
    heldout: dict = field(default_factory=dict)  # fit figures on pairs the fit did not see

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``(N, D_new)`` or ``(D_new,)`` -> unit vectors of the older space, same leading shape."""
        x = np.asarray(x, dtype=np.float32)
        single = x.ndim == 1
        x = _unit(np.atleast_2d(x))
        y = _unit(((x - self.x_mean) / self.x_std) @ self.weight * self.y_std + self.y_mean)
        return y[0] if single else y

    def arrays(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight, "x_mean": self.x_mean, "x_std": self.x_std, "y_mean": self.y_mean,
                "y_std": self.y_std}

    @classmethod
    def from_arrays(cls, kind: str, arrays: dict[str, np.ndarray], heldout: dict | None = None) -> "SpaceMap":
        if kind not in KINDS:
            raise ValueError(f"unknown map kind {kind!r}; expected one of {KINDS}")
        weight, x_mean, x_std, y_mean, y_std = (np.asarray(arrays[k], dtype=np.float32)
                                                for k in ("weight", "x_mean", "x_std", "y_mean", "y_std"))
        if weight.shape != (len(x_mean), len(y_mean)) or x_std.shape != x_mean.shape or y_std.shape != y_mean.shape:
            raise ValueError(f"map weight {weight.shape} does not fit means {len(x_mean)} -> {len(y_mean)}")
        return cls(kind, weight, x_mean, x_std, y_mean, y_std, dict(heldout or {}))


def _standardised(v: np.ndarray, per_dimension: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(z, mean, std)`` of unit rows ``v``: centred, and divided by each dimension's spread
    (or, for a rotation, which per-dimension scales would bend, by one spread for all)."""
    v = _unit(v).astype(np.float64)
    mean = v.mean(0)
    std = v.std(0) if per_dimension else np.full(v.shape[1], np.sqrt(np.mean(v.var(0))))
    std = np.where(std > 1e-8, std, 1.0)
    return (v - mean) / std, mean, std


def _space_map(kind: str, weight, x_mean, x_std, y_mean, y_std) -> SpaceMap:
    return SpaceMap(kind, *(np.asarray(a, dtype=np.float32) for a in (weight, x_mean, x_std, y_mean, y_std)))


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float = 1.0) -> SpaceMap:
    """Ridge regression from ``x`` (N, D_new) to ``y`` (N, D_old) on standardised rows."""
    zx, x_mean, x_std = _standardised(x)
    zy, y_mean, y_std = _standardised(y)
    gram = zx.T @ zx + alpha * np.eye(zx.shape[1])  # (D_new, D_new)
    weight = np.linalg.solve(gram, zx.T @ zy)  # (D_new, D_old)
    return _space_map("ridge", weight, x_mean, x_std, y_mean, y_std)


def fit_procrustes(x: np.ndarray, y: np.ndarray) -> SpaceMap:
    """The rotation that best takes centred ``x`` onto centred ``y`` (same dimension).

    Raises:
        ValueError: the two spaces have different dimensions.
    """
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"Procrustes needs one dimension on both sides, got {x.shape[1]} -> {y.shape[1]}")
    zx, x_mean, x_std = _standardised(x, per_dimension=False)
    zy, y_mean, y_std = _standardised(y, per_dimension=False)
    u, _, vt = np.linalg.svd(zx.T @ zy)
    return _space_map("procrustes", u @ vt, x_mean, x_std, y_mean, y_std)


def map_quality(space_map: SpaceMap, x: np.ndarray, y: np.ndarray) -> dict:
    """How well the map takes ``x`` onto its partners ``y``.

    Returns:
        ``{"pairs", "cosine"}`` (mean cosine of each mapped vector with its partner) and
        ``"recall@1"``: the share of mapped vectors whose nearest ``y`` is their own partner,
        beside ``"chance"`` (1 / pairs).
    """
    mapped, target = space_map.apply(x), _unit(y)
    cosine = float(np.mean(np.sum(mapped * target, axis=1)))
    nearest = np.argmax(mapped @ target.T, axis=1)
    return {"pairs": int(len(x)), "cosine": round(cosine, 4),
            "recall@1": round(float(np.mean(nearest == np.arange(len(x)))), 4),
            "chance": round(1.0 / max(len(x), 1), 4)}


def fit_space_map(x: np.ndarray, y: np.ndarray, *, alpha: float = 1.0, heldout_fraction: float = 0.2,
                  seed: int = 0) -> SpaceMap:
    """Fit ridge and (where the dimensions agree) Procrustes; keep the one better on held-out pairs.

    Args:
        x: ``(N, D_new)`` tonight's vectors of some clips.
        y: ``(N, D_old)`` the older version's vectors of the same clips, row for row.
        alpha: ridge regularisation.
        heldout_fraction: pairs kept out of the fit to measure it (at least 1 when N >= 4).
        seed: which pairs are held out.
    Returns:
        the chosen map, refitted on every pair, with ``heldout`` holding both kinds' held-out
        figures and ``"chosen"``.
    Raises:
        ValueError: fewer than two pairs, or ``x`` and ``y`` of different lengths.
    """
    x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float32)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"a map needs at least two pairs, row for row; got {len(x)} and {len(y)} vectors")
    order = np.random.default_rng([seed, 0x5AC3]).permutation(len(x))
    n_held = min(max(int(round(len(x) * heldout_fraction)), 1 if len(x) >= 4 else 0), len(x) - 2)
    held, fit = order[:n_held], order[n_held:]
    kinds = ["ridge"] + (["procrustes"] if x.shape[1] == y.shape[1] else [])
    figures: dict = {}
    for kind in kinds:
        candidate = fit_ridge(x[fit], y[fit], alpha) if kind == "ridge" else fit_procrustes(x[fit], y[fit])
        figures[kind] = map_quality(candidate, x[held], y[held]) if n_held else None
    # By held-out recall@1 first: the cosine is dominated by the direction all vectors share.
    # Without held-out pairs there is nothing to choose by: ridge, the one that always exists.
    chosen = max(kinds, key=lambda k: (figures[k]["recall@1"], figures[k]["cosine"])) if n_held else "ridge"
    final = fit_ridge(x, y, alpha) if chosen == "ridge" else fit_procrustes(x, y)
    final.heldout = {"chosen": chosen, "fit_pairs": int(len(fit)), **figures}
    return final
