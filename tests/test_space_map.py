"""The map from tonight's space to an earlier version's: ridge and orthogonal Procrustes."""
from __future__ import annotations

import numpy as np
import pytest

from models.space_map import SpaceMap, fit_procrustes, fit_ridge, fit_space_map, map_quality


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _rotated_pairs(n=300, d=16, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    old = _unit(rng.normal(size=(n, d)))
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    new = _unit(old @ rotation + noise * rng.normal(size=(n, d)))  # tonight's encoder: the same content, turned
    return new.astype(np.float32), old.astype(np.float32)


def test_procrustes_recovers_a_rotation_exactly():
    new, old = _rotated_pairs()
    quality = map_quality(fit_procrustes(new, old), new, old)
    assert quality["cosine"] > 0.999 and quality["recall@1"] == 1.0


def test_ridge_maps_between_different_dimensions():
    rng = np.random.default_rng(1)
    old = _unit(rng.normal(size=(400, 12)))
    new = _unit(old @ rng.normal(size=(12, 20)))  # a wider space holding the same information
    space_map = fit_ridge(new[:300], old[:300], alpha=1e-3)
    held = map_quality(space_map, new[300:], old[300:])
    assert held["cosine"] > 0.99 and held["recall@1"] == 1.0
    with pytest.raises(ValueError, match="one dimension"):
        fit_procrustes(new, old)


def test_fit_space_map_reports_held_out_figures_and_chooses_the_better():
    new, old = _rotated_pairs(n=60, noise=0.3, seed=2)
    space_map = fit_space_map(new, old, alpha=1.0, heldout_fraction=0.25, seed=0)
    figures = space_map.heldout
    assert set(figures) >= {"chosen", "ridge", "procrustes", "fit_pairs"} and figures["fit_pairs"] == 45
    assert figures["ridge"]["pairs"] == figures["procrustes"]["pairs"] == 15
    assert figures["chosen"] == max(("ridge", "procrustes"), key=lambda k: (figures[k]["recall@1"], figures[k]["cosine"]))
    # The map carries real information: mapped held-out vectors find their partners far above chance.
    best = figures[figures["chosen"]]
    assert best["recall@1"] >= 0.5 > 5 * best["chance"]


def test_small_deviations_from_a_shared_direction_survive_the_map():
    """Like an encoder's vectors: one direction shared by all, moments told apart by small deviations."""
    rng = np.random.default_rng(4)
    d = 32
    common = rng.normal(size=d)
    old = _unit(10 * common + rng.normal(size=(120, d)))  # pairwise cosines about 0.99
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    new = _unit(old @ rotation + 0.01 * rng.normal(size=(120, d)))
    figures = fit_space_map(new, old, alpha=1.0, heldout_fraction=0.25).heldout
    assert figures[figures["chosen"]]["recall@1"] >= 0.9, figures


def test_unrelated_spaces_map_no_better_than_chance():
    rng = np.random.default_rng(3)
    new, old = _unit(rng.normal(size=(200, 8))), _unit(rng.normal(size=(200, 8)))
    figures = fit_space_map(new, old, heldout_fraction=0.5).heldout
    assert figures[figures["chosen"]]["recall@1"] < 0.1


def test_map_round_trips_through_its_arrays():
    new, old = _rotated_pairs(n=40, d=6)
    space_map = fit_space_map(new, old)
    again = SpaceMap.from_arrays(space_map.kind, space_map.arrays(), space_map.heldout)
    np.testing.assert_allclose(again.apply(new[:3]), space_map.apply(new[:3]))
    assert again.apply(new[0]).shape == (6,) and abs(np.linalg.norm(again.apply(new[0])) - 1) < 1e-5
    with pytest.raises(ValueError, match="does not fit"):
        SpaceMap.from_arrays("ridge", {**space_map.arrays(), "y_mean": np.zeros(3)})


def test_too_few_pairs_is_an_error():
    with pytest.raises(ValueError, match="at least two pairs"):
        fit_space_map(np.zeros((1, 4)), np.zeros((1, 4)))
