"""Stored maps between versions of a space: saved, replaced, loaded back."""
from __future__ import annotations

import numpy as np

from core.paths import Paths
from memory.db import open_database
from memory.maps import load_map, maps_from, save_map
from models.space_map import SpaceMap, fit_space_map


def test_map_is_saved_replaced_and_loaded(tmp_path):
    paths = Paths.at(tmp_path)
    engine = open_database(paths.database)
    rng = np.random.default_rng(0)
    old = rng.normal(size=(50, 8)).astype(np.float32)
    fitted = fit_space_map(old @ np.linalg.qr(rng.normal(size=(8, 8)))[0], old)
    first = save_map(engine, paths, space="vision", from_version="jepa@2026-01-16", to_version="jepa@2026-01-15",
                     kind=fitted.kind, arrays=fitted.arrays(), heldout=fitted.heldout)
    second = save_map(engine, paths, space="vision", from_version="jepa@2026-01-16", to_version="jepa@2026-01-15",
                      kind=fitted.kind, arrays=fitted.arrays(), heldout=fitted.heldout)
    assert first != second and not (paths.root / first).exists() and (paths.root / second).exists()
    stored = load_map(engine, paths, "vision", "jepa@2026-01-16", "jepa@2026-01-15")
    again = SpaceMap.from_arrays(stored.kind, stored.arrays, stored.heldout)
    np.testing.assert_allclose(again.apply(old[:4]), fitted.apply(old[:4]), atol=1e-6)
    assert stored.heldout["chosen"] == fitted.heldout["chosen"]
    assert maps_from(engine, "vision", "jepa@2026-01-16")[0][0] == "jepa@2026-01-15"
    assert load_map(engine, paths, "vision", "jepa@2026-01-16", "jepa@2026-01-14") is None
    assert oct((paths.root / second).stat().st_mode & 0o777) == "0o600"
    engine.dispose()
