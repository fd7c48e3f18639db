"""The shard format: a shard written is read back as written; a file that disagrees with
its catalog row is refused, naming the file."""
from __future__ import annotations

import re

import numpy as np
import pytest

from core.paths import Paths
from memory import shards
from memory.catalog import Shard

DATE = "2026-01-10"


@pytest.fixture
def paths(root):
    return Paths.at(root)


def _write(paths: Paths, vectors: np.ndarray) -> Shard:
    """Write ``vectors`` as a shard; return the catalog row the store would record."""
    unit = shards.normalise(vectors)
    final, sums = shards.write_shard(paths, space="vision", model_version="m@1", date=DATE, unit=unit)
    return Shard(path=str(final.relative_to(paths.root)), rows=unit.shape[0], dim=unit.shape[1],
                 block_sums=sums)


def test_a_written_shard_opens_as_written(paths):
    vectors = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    shard = _write(paths, vectors)
    assert (paths.root / shard.path).parent == shards.shard_folder(paths, "vision", "m@1")
    opened = shards.open_shard(paths, shard)
    assert opened.dtype == shards.DTYPE and opened.shape == (5, 8)
    assert not opened.flags.writeable
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(shards.read_rows(paths, shard), unit, atol=1e-3)
    np.testing.assert_allclose(shards.read_rows(paths, shard, [4, 1]), unit[[4, 1]], atol=1e-3)
    assert shards.shard_problem(paths, shard) is None


def test_a_shard_of_another_dtype_is_refused_naming_the_file(paths):
    shard = _write(paths, np.ones((3, 4)))
    np.save(paths.root / shard.path, np.ones((3, 4), np.float32))  # same shape, float32
    with pytest.raises(shards.ShardError, match=rf"{re.escape(shard.path)}: holds \(3, 4\) float32, "
                                                rf"database says \(3, 4\) float16"):
        shards.open_shard(paths, shard)
    assert shards.shard_problem(paths, shard) == "holds (3, 4) float32"


def test_a_shard_of_another_shape_is_refused_naming_the_file(paths):
    shard = _write(paths, np.ones((3, 4)))
    row = Shard(path=shard.path, rows=3, dim=6)  # the catalog says 6-d
    with pytest.raises(shards.ShardError, match=rf"{re.escape(shard.path)}: holds \(3, 4\) float16, "
                                                rf"database says \(3, 6\) float16"):
        shards.open_shard(paths, row)
    assert shards.shard_problem(paths, row) == "holds (3, 4) float16"


def test_a_file_that_is_not_npy_is_refused_naming_the_file(paths):
    shard = _write(paths, np.ones((3, 4)))
    (paths.root / shard.path).write_bytes(b"not an array")
    with pytest.raises(shards.ShardError, match=rf"{re.escape(shard.path)}: is not a readable \.npy file"):
        shards.open_shard(paths, shard)


def test_a_missing_shard_is_file_not_found(paths):
    """Search reads the shard list again on FileNotFoundError (a day forgotten meanwhile)."""
    shard = _write(paths, np.ones((3, 4)))
    (paths.root / shard.path).unlink()
    with pytest.raises(FileNotFoundError):
        shards.open_shard(paths, shard)
    assert shards.shard_problem(paths, shard) == "missing"


def test_every_write_has_a_new_name_and_day_files_finds_them(paths):
    first, second = _write(paths, np.ones((2, 4))), _write(paths, np.ones((2, 4)))
    assert first.path != second.path
    assert [str(p.relative_to(paths.root)) for p in shards.day_files(paths, DATE)] == \
        sorted([first.path, second.path])
    assert shards.day_files(paths, "2026-01-11") == []


@pytest.mark.parametrize("space, version, date, message", [
    ("../up", "m@1", DATE, "space"),
    ("vision", "m/1", DATE, "model_version"),
    ("vision", "m@1", "10-01-2026", "YYYY-MM-DD"),
])
def test_names_that_cannot_be_folder_names_are_refused(paths, space, version, date, message):
    with pytest.raises(ValueError, match=message):
        shards.write_shard(paths, space=space, model_version=version, date=date,
                           unit=np.ones((1, 4), np.float32))
    assert not paths.embeddings.exists()
