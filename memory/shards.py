"""The on-disk vector format: the one module that knows what a shard file holds.

A shard is one ``.npy`` file of ``(rows, dim)`` :data:`DTYPE` (float16) vectors, every row
L2-normalised so that cosine similarity is a dot product, stored at
``memory/embeddings/{space}/{model_version}/{date}-{id}.npy``. It is written to a
temporary name, fsynced and renamed, so a file is whole or absent; every write gets a new
name, so a path names its content for good and readers may memory-map and cache it.
Opening a shard checks its dtype and shape against its catalog row
(:class:`memory.catalog.Shard`) and refuses a file that disagrees, naming it. The row also
holds the file's block checksums (:mod:`memory.integrity`), summed as it is written: a
whole-shard read checks every block once per process, a read of some rows the blocks they
lie in, so a flipped byte is refused where it would be read, never ranked.

The rest of the package goes through here: the store writes with :func:`write_shard`,
search and ``load_vectors`` read with :func:`open_shard` / :func:`read_rows`, the doctor
checks with :func:`shard_problem`, forget finds a day's files with :func:`day_files`, and
dropping a superseded version removes its folder with :func:`remove_version_files`.
"""
from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from core.atomic import atomic_file
from core.paths import Paths, make_private_dir
from memory import integrity
from memory.catalog import Shard

# Half the disk and RAM of float32; exact search rescores its candidates in float32.
DTYPE = np.dtype(np.float16)
SUFFIX = ".npy"
# Space and version names become folder names, the date starts the file name.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

# Memory maps of opened shards, by absolute path (a file is never rewritten in place), and
# which of their blocks this process has checked (``True``: all of them).
_MAPS: dict[Path, np.ndarray] = {}
_CHECKED: dict[Path, set[int] | bool] = {}


class ShardError(ValueError):
    """A shard file that is unreadable or disagrees with its catalog row.

    Attributes:
        path: the file, relative to the root.
        reason: what is wrong with it, e.g. ``"holds (3, 8) float32"``.
    """

    def __init__(self, path: str, reason: str, expected: str):
        super().__init__(f"{path}: {reason}, database says {expected}; run `sleep.py doctor`")
        self.path = path
        self.reason = reason


def check_key(space: str, model_version: str, date: str) -> None:
    """Refuse a (space, model_version, date) that cannot name a shard's folder and file.

    Raises:
        ValueError: a name with characters other than letters, digits and ``_.@+-``, or a
            date that is not ``YYYY-MM-DD``.
    """
    for what, value in (("space", space), ("model_version", model_version)):
        if not _SAFE_NAME.match(value or ""):
            raise ValueError(f"{what} {value!r}: use letters, digits and _.@+- only")
    if not _DATE.match(date or ""):
        raise ValueError(f"date {date!r}: expected YYYY-MM-DD")


def normalise(vectors: np.ndarray) -> np.ndarray:
    """L2-normalised float32 copy of ``(N, D)`` vectors; a zero or non-finite row is an error."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"vectors must be (N, D), got shape {v.shape}")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    bad = ~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} vector(s) are zero or not finite (first: row "
                         f"{int(np.argmax(bad))})")
    return v / norms


def shard_folder(paths: Paths, space: str, model_version: str) -> Path:
    """The folder of one (space, model_version)'s shard files."""
    return paths.embeddings / space / model_version


def private_folder(paths: Paths, folder: Path) -> Path:
    """Create ``folder`` under ``memory/`` with every level 0700 (``mkdir(parents=True)``
    would give the intermediate levels the umask's mode)."""
    make_private_dir(paths.memory)
    current = paths.memory
    for part in folder.relative_to(paths.memory).parts:
        current = current / part
        current.mkdir(mode=0o700, exist_ok=True)
    return folder


class Written(NamedTuple):
    """A shard file just written: its absolute path and its block checksums."""

    path: Path
    block_sums: bytes


def write_shard(paths: Paths, *, space: str, model_version: str, date: str,
                unit: np.ndarray) -> Written:
    """Write a new shard file, atomically, under a name no earlier write used.

    Args:
        paths: the root's layout.
        space: the space's name (a folder name, see :func:`check_key`).
        model_version: the encoder's version (a folder name).
        date: the night, ``YYYY-MM-DD``.
        unit: ``(N, D)`` rows from :func:`normalise`; stored as :data:`DTYPE`.
    Returns:
        the file's absolute path and block checksums; the caller records both (the path
        relative to the root) in the catalog.
    """
    check_key(space, model_version, date)
    folder = private_folder(paths, shard_folder(paths, space, model_version))
    final = folder / f"{date}-{uuid.uuid4().hex[:12]}{SUFFIX}"
    with atomic_file(final) as fh:
        summing = integrity.SummingWriter(fh)
        np.save(summing, np.asarray(unit, dtype=DTYPE), allow_pickle=False)
    return Written(final, summing.sums())


def day_files(paths: Paths, date: str) -> list[Path]:
    """Every shard file of ``date`` on disk, in any space and version, known or not."""
    return sorted(paths.embeddings.glob(f"*/*/{date}-*{SUFFIX}"))


def release_maps(folder: Path, keep: set[Path]) -> None:
    """Close this process's memory maps of files in ``folder`` but those in ``keep``
    (absolute paths): files replaced or deleted since they were opened."""
    for key in [k for k in _MAPS if k.parent == folder and k not in keep]:
        del _MAPS[key]
        _CHECKED.pop(key, None)


def remove_version_files(paths: Paths, space: str, model_version: str) -> int:
    """Delete the folder of one (space, model_version)'s shard files, after its rows are gone.

    Returns:
        the bytes the files held (their memory maps in this process are closed first, so
        the space is really freed).
    """
    folder = shard_folder(paths, space, model_version)
    if not folder.is_dir():
        return 0
    for key in [k for k in _MAPS if k.parent == folder]:
        del _MAPS[key]
        _CHECKED.pop(key, None)
    freed = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    shutil.rmtree(folder)
    return freed


def _load(paths: Paths, shard: Shard) -> np.ndarray:
    """Memory-map ``shard``'s file and check it against the row; uncached.

    Raises:
        FileNotFoundError: the file is gone (search reads the shard list again).
        ShardError: the file is not an ``.npy`` array of the row's shape and :data:`DTYPE`.
    """
    expected = f"({shard.rows}, {shard.dim}) {DTYPE}"
    try:
        array = np.load(paths.root / shard.path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise ShardError(shard.path, f"is not a readable .npy file ({exc})", expected) from exc
    if array.shape != (shard.rows, shard.dim) or array.dtype != DTYPE:
        raise ShardError(shard.path, f"holds {array.shape} {array.dtype}", expected)
    return array


def open_shard(paths: Paths, shard: Shard, *, check: bool = True) -> np.ndarray:
    """The shard's ``(rows, dim)`` vectors, memory-mapped, read-only (cached per file).

    Args:
        paths: the root's layout.
        shard: its catalog row (path, rows, dim, block sums).
        check: check every block against its sum (once per process): for a caller that
            reads the whole shard. One that reads some rows passes ``False`` and checks
            those with :func:`check_rows`.
    Returns:
        a read-only :data:`DTYPE` memory map; rows are unit length.
    Raises:
        FileNotFoundError: the file is gone.
        ShardError: the file disagrees with the row, or a block with its checksum (the
            message names the file).
    """
    key = paths.root / shard.path
    array = _MAPS.get(key)
    if array is None:
        array = _MAPS[key] = _load(paths, shard)
    if check and _sums(shard) and _CHECKED.get(key) is not True:
        _check_blocks(shard, key, None)
        _CHECKED[key] = True
    return array


def check_rows(paths: Paths, shard: Shard, rows: Sequence[int] | np.ndarray) -> None:
    """Check the blocks that ``rows`` of an opened shard lie in (each block once per process).

    Raises:
        ShardError: one of them does not match its checksum.
    """
    key = paths.root / shard.path
    done = _CHECKED.get(key)
    if not _sums(shard) or done is True:
        return
    array = open_shard(paths, shard, check=False)
    row_bytes = shard.dim * DTYPE.itemsize
    rows = np.asarray(rows, dtype=np.int64)
    first = (array.offset + rows * row_bytes) // integrity.BLOCK
    last = (array.offset + (rows + 1) * row_bytes - 1) // integrity.BLOCK
    blocks = set(first.tolist()) | set(last.tolist())
    if not isinstance(done, set):
        done = _CHECKED[key] = set()
    blocks -= done
    if blocks:
        _check_blocks(shard, key, blocks)
        done |= blocks


def _sums(shard) -> bytes | None:
    """The shard's block checksums; ``None`` for one written before them, or a catalog row
    of a kind that records none (the journal's text shards)."""
    return getattr(shard, "block_sums", None)


def _check_blocks(shard: Shard, key: Path, blocks: set[int] | None) -> None:
    sums = _sums(shard)
    found = integrity.damage(key, sums, blocks)
    if found is not None:
        raise ShardError(shard.path, f"damaged: {found}", f"{integrity.blocks_of(sums)} blocks as written")


def read_rows(paths: Paths, shard: Shard, rows: Sequence[int] | None = None) -> np.ndarray:
    """Rows of a shard as a float32 ``(len(rows), dim)`` array (every row when ``None``),
    their blocks checked."""
    if rows is None:
        return np.asarray(open_shard(paths, shard), dtype=np.float32)
    vectors = open_shard(paths, shard, check=False)
    check_rows(paths, shard, rows)
    return np.asarray(vectors[np.asarray(rows, dtype=np.int64)], dtype=np.float32)


def shard_problem(paths: Paths, shard: Shard, *, read_data: bool = False) -> str | None:
    """What is wrong with the shard's file, read afresh (never from the cache), or ``None``.

    Args:
        read_data: also read the whole file against its block checksums (when it has them).
    Returns:
        ``"missing"``, a :attr:`ShardError.reason` such as ``"holds (3, 8) float32"`` or
        ``"damaged: block 2 of 5 (...) does not match its checksum"``, or ``None`` when the
        file matches its catalog row.
    """
    try:
        _load(paths, shard)
        if read_data and _sums(shard):
            _check_blocks(shard, paths.root / shard.path, None)
    except FileNotFoundError:
        return "missing"
    except ShardError as exc:
        return exc.reason
    return None
