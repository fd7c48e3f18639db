"""Checksums of stored files, a 1 MiB block at a time: a flipped byte is found where it is read.

Each block of a file gets a 16-byte digest (SHA-256, cut to 16 bytes: with the CPU's SHA
instructions 1.7 GB/s here, twice BLAKE2b's 0.84), written beside the file's catalog row
(:class:`memory.catalog.Shard` ``block_sums``) while the file is written, so the sums are of
what the program meant to store. Blocks, not one digest a file, because a search of a
year-sized memory reads a few hundred scattered rows: it checks the blocks those rows lie in
(a few MiB), where one digest would make it read every file whole. A search that reads a
whole shard anyway (the exact path) checks all its blocks once per process.

Checksums are for damage (a bad disk, a torn copy, a stray write), not for an attacker: the
encryption at rest is what keeps the memory private and authentic. The sums are of the
plaintext, so they mean the same in a sealed memory (``memory.encryption: on``): a sealed file
is read through its root's vault (:mod:`core.vault`), and one that does not decrypt (a flipped
byte fails its chunk's AES-GCM tag, a cut file its header's length) is damage like any other.
"""
from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from core.paths import Paths
from core.sealed import MAGIC, SealedFileError
from core.vault import open_file

BLOCK = 1 << 20
DIGEST = 16  # bytes a block
# Where a damaged file goes (relative to the root), under its own relative path: kept, since
# nothing is lost and a copy may be recovered from it, and out of the folders that searches,
# nights and the stray-file checks read.
QUARANTINE = "memory/quarantine"


def digest(data) -> bytes:
    """One block's digest."""
    return hashlib.sha256(data).digest()[:DIGEST]


class SummingWriter:
    """A binary file wrapper that sums what passes through it, a block at a time.

    ``np.save(SummingWriter(fh), array)`` writes the file and its sums in one pass.
    """

    def __init__(self, fh):
        self._fh = fh
        self._pending = bytearray()
        self._sums = bytearray()

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self._fh.write(view)
        start = 0
        if self._pending:
            take = min(BLOCK - len(self._pending), len(view))
            self._pending += view[:take]
            start = take
            if len(self._pending) == BLOCK:
                self._sums += digest(self._pending)
                self._pending.clear()
        while len(view) - start >= BLOCK:
            self._sums += digest(view[start:start + BLOCK])
            start += BLOCK
        self._pending += view[start:]
        return len(view)

    def flush(self) -> None:
        self._fh.flush()

    def sums(self) -> bytes:
        """The digests of every block written so far (the last one short), in order."""
        tail = digest(self._pending) if self._pending else b""
        return bytes(self._sums) + tail


def blocks_of(sums: bytes) -> int:
    return len(sums) // DIGEST


def file_sums(path: Path) -> bytes:
    """The block digests of ``path``'s plaintext (the file as it is on disk, unless sealed).

    Raises:
        SealedFileError: a sealed file that does not decrypt.
    """
    out = bytearray()
    with _plaintext(path) as fh:
        while block := fh.read(BLOCK):
            out += digest(block)
    return bytes(out)


def damage(path: Path, sums: bytes, blocks: Iterable[int] | None = None) -> str | None:
    """What is wrong with ``path`` against its recorded ``sums``, or ``None``.

    A sealed file is checked by its plaintext, decrypted as it is read.

    Args:
        blocks: check only these block numbers (the rows a search reads); every block when
            ``None``, and then also that the file has no more and no fewer blocks.
    Returns:
        e.g. ``"block 3 of 12 (bytes 3145728-4194303) does not match its checksum"``,
        ``"is 12 blocks long, 14 recorded"``, or ``"does not decrypt (...)"``.
    Raises:
        FileNotFoundError: the file is gone.
    """
    count = blocks_of(sums)
    try:
        with _plaintext(path) as fh:
            size = fh.seek(0, io.SEEK_END)
            if -(-size // BLOCK) != count:
                return f"is {size:,} bytes ({-(-size // BLOCK)} blocks), its checksums cover {count} blocks"
            wanted = range(count) if blocks is None else sorted(set(blocks))
            for number in wanted:
                if not 0 <= number < count:
                    continue
                fh.seek(number * BLOCK)
                if digest(fh.read(BLOCK)) != sums[number * DIGEST:(number + 1) * DIGEST]:
                    end = min(size, (number + 1) * BLOCK) - 1
                    return f"block {number + 1} of {count} (bytes {number * BLOCK}-{end}) does not match its checksum"
    except SealedFileError as exc:
        return f"does not decrypt ({sealed_reason(exc, path)})"
    return None


def _plaintext(path: Path) -> BinaryIO:
    """``path`` open for reading its plaintext: as it is (unbuffered: read a block at a time),
    or, when it is sealed, through its root's vault. One open of a plain file: a shard deleted
    (replaced by a rerun night) after this is still read whole, as the search expects."""
    fh = open(path, "rb", buffering=0)  # noqa: SIM115 (returned, or closed below)
    try:
        sealed = fh.read(len(MAGIC)) == MAGIC
        fh.seek(0)
    except BaseException:
        fh.close()
        raise
    if not sealed:
        return fh
    fh.close()
    return open_file(path)


def sealed_reason(exc: SealedFileError, path: Path) -> str:
    """What a :class:`SealedFileError` says, without the file's name at its start (the
    doctor's and the search's lines name the file themselves)."""
    text = str(exc)
    for name in (str(path), os.path.abspath(path)):
        if text.startswith(f"{name}: "):
            return text[len(name) + 2:]
    return text


def quarantine(paths: Paths, rel: str) -> Path | None:
    """Move ``rel`` (relative to the root) under :data:`QUARANTINE`, keeping its path (a file
    already there of that name stays too, beside it); returns where it went, ``None`` if
    there was no file."""
    source = paths.root / rel
    if not source.exists():
        return None
    target = paths.root / QUARANTINE / rel
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if target.exists():
        target = target.with_name(f"{target.name}.{time.time_ns()}")
    os.replace(source, target)
    return target
