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

In a sealed memory (``memory.encryption: on``) the same ``.npy`` bytes are sealed
(:mod:`core.sealed`) through the root's vault, and the block sums are of the plaintext. A
sealed file cannot be memory-mapped: read whole it is decrypted into RAM and cached (within
:data:`SEALED_CACHE_BYTES`), and a caller that reads some rows gets a :class:`SealedRows`,
which decrypts only the chunks holding them. Every chunk read is authenticated (AES-GCM),
so a flipped byte, a cut or a swapped sealed file fails where it is read, as a
:class:`ShardError` that says "damaged".

The rest of the package goes through here: the store writes with :func:`write_shard`,
search and ``load_vectors`` read with :func:`open_shard` / :func:`read_rows`, the doctor
checks with :func:`shard_problem`, forget finds a day's files with :func:`day_files`, and
dropping a superseded version removes its folder with :func:`remove_version_files`.
"""
from __future__ import annotations

import contextlib
import io
import re
import shutil
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from core.paths import Paths, make_private_dir
from core.sealed import CHUNK_SIZE, MAGIC, SealedFileError
from memory import integrity
from memory.catalog import Shard

# Half the disk and RAM of float32; exact search rescores its candidates in float32.
DTYPE = np.dtype(np.float16)
SUFFIX = ".npy"
# Space and version names become folder names, the date starts the file name.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

# Memory maps of opened shards (for a sealed one: its decrypted rows, or a SealedRows), by
# absolute path (a file is never rewritten in place), and which of their blocks this process
# has checked (``True``: all of them).
_MAPS: dict[Path, np.ndarray | SealedRows] = {}
_CHECKED: dict[Path, set[int] | bool] = {}
# Sealed shards held decrypted in _MAPS, by path: their bytes, least recently used first. A
# plain shard's map costs page cache, which the kernel reclaims; a decrypted copy is this
# process's own memory, so past this many bytes the oldest are dropped (read again if asked).
SEALED_CACHE_BYTES = 4 << 30
_HELD: OrderedDict[Path, int] = OrderedDict()


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
    # Summed before it is sealed: the sums are of the plaintext whether or not the memory is.
    with paths.vault.writer(final) as fh:
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
        _forget(key)


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
        _forget(key)
    freed = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    shutil.rmtree(folder)
    return freed


def _forget(key: Path) -> None:
    _MAPS.pop(key, None)
    _CHECKED.pop(key, None)
    _HELD.pop(key, None)


def _keep(key: Path, array: np.ndarray | SealedRows) -> None:
    """Cache ``array`` as ``key``'s; a decrypted one counts against :data:`SEALED_CACHE_BYTES`."""
    _MAPS[key] = array
    if isinstance(array, np.memmap | SealedRows):
        return
    _HELD[key] = array.nbytes
    _HELD.move_to_end(key)
    while len(_HELD) > 1 and sum(_HELD.values()) > SEALED_CACHE_BYTES:
        oldest = next(iter(_HELD))
        del _HELD[oldest]
        _MAPS.pop(oldest, None)  # its _CHECKED stays: the file is never rewritten in place


def _expected(shard: Shard) -> str:
    return f"({shard.rows}, {shard.dim}) {DTYPE}"


def _load(paths: Paths, shard: Shard, *, whole: bool = True) -> np.ndarray | SealedRows:
    """Open ``shard``'s file and check it against the row; uncached.

    A plain file is memory-mapped. A sealed one is decrypted whole into RAM (``whole``), or
    only its header is read and a :class:`SealedRows` returned.

    Raises:
        FileNotFoundError: the file is gone (search reads the shard list again).
        ShardError: the file is not an ``.npy`` array of the row's shape and :data:`DTYPE`,
            or is sealed and does not decrypt ("damaged: ...").
    """
    file = paths.root / shard.path
    try:
        # One open, its header read and mapped from it (as np.load's memory map would be): a
        # file replaced and deleted meanwhile is read whole, never found gone halfway.
        with open(file, "rb") as fh:
            sealed = fh.read(len(MAGIC)) == MAGIC
            if not sealed:
                fh.seek(0)
                offset = _header(fh, shard)
                return np.memmap(fh, dtype=DTYPE, mode="r", offset=offset, shape=(shard.rows, shard.dim))
    except (FileNotFoundError, ShardError):
        raise
    except (OSError, ValueError) as exc:
        raise ShardError(shard.path, f"is not a readable .npy file ({exc})", _expected(shard)) from exc
    vault = paths.vault
    with _reading(vault, file, shard.path, _expected(shard)) as fh:
        offset = _header(fh, shard)
        if not whole:
            return SealedRows(vault, file, shard, offset)
        # The whole plaintext, header too: read from byte 0, chunk edges fall on the buffer's,
        # so each chunk is decrypted straight into it (no second copy of the shard).
        data = bytearray(offset + shard.rows * shard.dim * DTYPE.itemsize)
        fh.seek(0)
        if fh.readinto(data) != len(data):
            raise ShardError(shard.path, "is not a readable .npy file (cut short)", _expected(shard))
    array = np.frombuffer(data, DTYPE, count=shard.rows * shard.dim, offset=offset).reshape(shard.rows, shard.dim)
    array.flags.writeable = False
    return array


@contextlib.contextmanager
def _reading(vault, file: Path, name: str, expected: str) -> Iterator[BinaryIO]:
    """The sealed ``file`` (``name`` relative to the root) open for reading; a chunk that does
    not decrypt is a ShardError."""
    try:
        with vault.open(file) as fh:
            yield fh
    except SealedFileError as exc:
        raise ShardError(name, f"damaged: does not decrypt ({integrity.sealed_reason(exc, file)})",
                         expected) from exc


def _header(fh: BinaryIO, shard: Shard) -> int:
    """Read the ``.npy`` header at the start of ``fh`` (a plain file, or a sealed one's plaintext),
    check it against the row and the file's length; returns where the rows start."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f".npy format {version[0]}.{version[1]}")
    except ValueError as exc:
        raise ShardError(shard.path, f"is not a readable .npy file ({exc})", _expected(shard)) from exc
    _check_shape(shard, shape, dtype)
    if fortran and shard.rows > 1 and shard.dim > 1:  # np.save of a C array never writes this
        raise ShardError(shard.path, "is not a readable .npy file (Fortran order)", _expected(shard))
    offset = fh.tell()
    size = fh.seek(0, io.SEEK_END)
    if size < offset + shard.rows * shard.dim * DTYPE.itemsize:
        raise ShardError(shard.path, f"is not a readable .npy file ({size:,} bytes: cut short)", _expected(shard))
    return offset


def _check_shape(shard: Shard, shape: tuple, dtype: np.dtype) -> None:
    if tuple(shape) != (shard.rows, shard.dim) or dtype != DTYPE:
        raise ShardError(shard.path, f"holds {tuple(shape)} {dtype}", _expected(shard))


class SealedRows:
    """The rows of a sealed shard, decrypted as they are asked for: what a reader of a few rows
    (the IVF-PQ re-rank, one clip's vector) gets where a plain shard would be memory-mapped.

    Indexing by a row, a slice or an array of rows returns a float16 ndarray, as a memory
    map's would; ``np.asarray`` reads every row. A read opens the file, decrypts the chunks
    holding the rows asked for (rows close together in one read), and authenticates each:
    one that does not is a :class:`ShardError` ("damaged"), as is a file cut short.

    Attributes:
        shape, dtype, ndim: as the array's.
        offset: where the rows start in the plaintext (after the ``.npy`` header).
    """

    def __init__(self, vault, file: Path, shard: Shard, offset: int):
        # The row's fields, not the row: it is cached past the session that read it.
        self._vault, self._file, self._name, self._expected = vault, file, shard.path, _expected(shard)
        self.shape = (shard.rows, shard.dim)
        self.dtype = DTYPE
        self.ndim = 2
        self.offset = offset
        self._row_bytes = shard.dim * DTYPE.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        rows = self[:]
        return rows if dtype is None else rows.astype(dtype, copy=False)

    def __getitem__(self, key) -> np.ndarray:
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        n = self.shape[0]
        if isinstance(first, int | np.integer):
            row = int(first) + n if first < 0 else int(first)
            if not 0 <= row < n:
                raise IndexError(f"row {first} of a shard of {n} rows")
            return self._span(row, row + 1)[(0, *rest)]
        if isinstance(first, slice):
            start, stop, step = first.indices(n)
            rows = self._span(start, max(start, stop)) if step == 1 else self._take(np.arange(start, stop, step))
            return rows[(slice(None), *rest)]
        # Rows by an array (or a mask): the rows it names are read once each, then indexed as
        # the array would be (with the other axes' indices, NumPy's broadcasting included).
        rows = np.asarray(first)
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64, copy=False)
        rows = np.where(rows < 0, rows + n, rows)
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise IndexError(f"rows out of range for a shard of {n} rows")
        wanted, where = np.unique(rows.reshape(-1), return_inverse=True)
        return self._take(wanted)[(where.reshape(rows.shape), *rest)]

    def _take(self, wanted: np.ndarray) -> np.ndarray:
        """Rows ``wanted`` (sorted, unique, in range)."""
        found = np.empty((len(wanted), self.shape[1]), DTYPE)
        # Rows within a chunk of each other are read as one span: each chunk decrypted once.
        gap = max(1, CHUNK_SIZE // self._row_bytes)
        edges = [0, *(np.flatnonzero(np.diff(wanted) > gap) + 1).tolist(), len(wanted)]
        with self._open() as fh:
            for lo, hi in pairwise(edges):
                if hi > lo:
                    first = int(wanted[lo])
                    span = self._read(fh, first, int(wanted[hi - 1]) + 1)
                    found[lo:hi] = span[wanted[lo:hi] - first]
        return found

    def _span(self, start: int, stop: int) -> np.ndarray:
        if stop <= start:
            return np.empty((0, self.shape[1]), DTYPE)
        with self._open() as fh:
            return self._read(fh, start, stop)

    def _read(self, fh: BinaryIO, start: int, stop: int) -> np.ndarray:
        data = bytearray((stop - start) * self._row_bytes)
        fh.seek(self.offset + start * self._row_bytes)
        if fh.readinto(data) != len(data):
            raise ShardError(self._name, "is not a readable .npy file (cut short)", self._expected)
        return np.frombuffer(data, DTYPE).reshape(stop - start, self.shape[1])

    def _open(self):
        return _reading(self._vault, self._file, self._name, self._expected)


def open_shard(paths: Paths, shard: Shard, *, check: bool = True) -> np.ndarray | SealedRows:
    """The shard's ``(rows, dim)`` vectors, memory-mapped, read-only (cached per file).

    Args:
        paths: the root's layout.
        shard: its catalog row (path, rows, dim, block sums).
        check: check every block against its sum (once per process): for a caller that
            reads the whole shard. One that reads some rows passes ``False`` and checks
            those with :func:`check_rows`.
    Returns:
        a read-only :data:`DTYPE` memory map; rows are unit length. For a sealed shard: its
        rows decrypted into a read-only array with ``check``, else (unless that array is
        cached) a :class:`SealedRows` that decrypts the rows it is asked for.
    Raises:
        FileNotFoundError: the file is gone.
        ShardError: the file disagrees with the row, or a block with its checksum, or is
            sealed and does not decrypt (the message names the file).
    """
    key = paths.root / shard.path
    array = _MAPS.get(key)
    if array is None or (check and isinstance(array, SealedRows)):
        array = _load(paths, shard, whole=check)
        _keep(key, array)
        if not isinstance(array, np.memmap | SealedRows):
            # Decrypted whole, every chunk authenticated (AES-GCM) against the key and the
            # file's path: the plaintext is exactly what was sealed, and the sums were taken of
            # that very plaintext as it was written, so summing it again could find nothing.
            _CHECKED[key] = True
    elif key in _HELD:
        _HELD.move_to_end(key)
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
    if not isinstance(array, np.memmap):
        # Sealed: every read of its rows authenticates the chunks it decrypts (AES-GCM), and
        # a chunk that does not is refused there, as a ShardError; sums could add nothing.
        return
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
        ``"damaged: block 2 of 5 (...) does not match its checksum"`` (of a sealed file also
        ``"damaged: does not decrypt (...)"``), or ``None`` when the file matches its catalog
        row.
    """
    try:
        _load(paths, shard, whole=False)  # a sealed file: its header and last chunk only
        if read_data and _sums(shard):
            _check_blocks(shard, paths.root / shard.path, None)
    except FileNotFoundError:
        return "missing"
    except ShardError as exc:
        return exc.reason
    return None
