"""The on-disk vector format: the one module that knows what a shard file holds.

A shard is one ``.npy`` file of ``(rows, dim)`` :data:`DTYPE` (float16) vectors, every row
L2-normalised so that cosine similarity is a dot product, stored at
``memory/embeddings/{space}/{model_version}/{date}-{id}.npy``. It is written to a
temporary name, fsynced and renamed, so a file is whole or absent; every write gets a new
name, so a path names its content for good and readers may memory-map and cache it.
Opening a shard checks its dtype and shape against its catalog row
(:class:`memory.catalog.Shard`) and refuses a file that disagrees, naming it.

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

import numpy as np

from core.atomic import atomic_file
from core.paths import Paths, make_private_dir
from memory.catalog import Shard

# Half the disk and RAM of float32; exact search rescores its candidates in float32.
DTYPE = np.dtype(np.float16)
SUFFIX = ".npy"
# Space and version names become folder names, the date starts the file name.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

# Memory maps of opened shards, by absolute path (a file is never rewritten in place).
_MAPS: dict[Path, np.ndarray] = {}


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


def write_shard(paths: Paths, *, space: str, model_version: str, date: str,
                unit: np.ndarray) -> Path:
    """Write a new shard file, atomically, under a name no earlier write used.

    Args:
        paths: the root's layout.
        space: the space's name (a folder name, see :func:`check_key`).
        model_version: the encoder's version (a folder name).
        date: the night, ``YYYY-MM-DD``.
        unit: ``(N, D)`` rows from :func:`normalise`; stored as :data:`DTYPE`.
    Returns:
        the file's absolute path; the caller records it (relative to the root) in the catalog.
    """
    check_key(space, model_version, date)
    folder = private_folder(paths, shard_folder(paths, space, model_version))
    final = folder / f"{date}-{uuid.uuid4().hex[:12]}{SUFFIX}"
    with atomic_file(final) as fh:
        np.save(fh, np.asarray(unit, dtype=DTYPE), allow_pickle=False)
    return final


def day_files(paths: Paths, date: str) -> list[Path]:
    """Every shard file of ``date`` on disk, in any space and version, known or not."""
    return sorted(paths.embeddings.glob(f"*/*/{date}-*{SUFFIX}"))


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


def open_shard(paths: Paths, shard: Shard) -> np.ndarray:
    """The shard's ``(rows, dim)`` vectors, memory-mapped, read-only (cached per file).

    Args:
        paths: the root's layout.
        shard: its catalog row (path, rows, dim).
    Returns:
        a read-only :data:`DTYPE` memory map; rows are unit length.
    Raises:
        FileNotFoundError: the file is gone.
        ShardError: the file disagrees with the row (the message names the file).
    """
    key = paths.root / shard.path
    array = _MAPS.get(key)
    if array is None:
        array = _MAPS[key] = _load(paths, shard)
    return array


def read_rows(paths: Paths, shard: Shard, rows: Sequence[int] | None = None) -> np.ndarray:
    """Rows of a shard as a float32 ``(len(rows), dim)`` array (every row when ``None``)."""
    vectors = open_shard(paths, shard)
    picked = vectors if rows is None else vectors[np.asarray(rows, dtype=np.int64)]
    return np.asarray(picked, dtype=np.float32)


def shard_problem(paths: Paths, shard: Shard) -> str | None:
    """What is wrong with the shard's file, read afresh (never from the cache), or ``None``.

    Returns:
        ``"missing"``, a :attr:`ShardError.reason` such as ``"holds (3, 8) float32"``, or
        ``None`` when the file matches its catalog row.
    """
    try:
        _load(paths, shard)
    except FileNotFoundError:
        return "missing"
    except ShardError as exc:
        return exc.reason
    return None
