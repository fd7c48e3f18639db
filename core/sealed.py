"""Sealed files: AES-256-GCM in 1 MiB chunks, each readable on its own.

A sealed file is a header and a run of chunks::

    header  magic b"SLEEPSEAL" | format version (1 B) | chunk size (4 B) | plaintext length (8 B) | file id (16 B)
    chunk   nonce (12 B, random) | ciphertext (chunk size B; the last one shorter) | tag (16 B)

Every chunk is encrypted under a key of its own file (:func:`core.keys.derive_key` of the
master key and the file's random id), and its associated data binds the header, the
chunk's index, whether it is the last one (with the plaintext length when it is) and the
file's path relative to the root. So a flipped byte, a truncated or extended file, chunks
swapped or reordered, chunks of another file (or of an earlier version of the same path)
and a file moved or renamed under the root all fail to open, with :class:`SealedFileError`.

Chunks make random access cheap: :class:`SealedReader` decrypts only the chunks a read
touches, so ``np.load``'s header read or a few rows of a large shard cost a chunk or two,
not the file. Nothing is decrypted to disk; :class:`SealedWriter` encrypts as it is written
to (``np.save(writer, array)``, ``torch.save(obj, writer)``).
"""
from __future__ import annotations

import contextlib
import io
import os
import struct
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.atomic import atomic_file
from core.errors import SleepError
from core.keys import derive_key

MAGIC = b"SLEEPSEAL"
FORMAT_VERSION = 1
CHUNK_SIZE = 1 << 20
NONCE_BYTES, TAG_BYTES = 12, 16
CHUNK_OVERHEAD = NONCE_BYTES + TAG_BYTES
FILE_ID_BYTES = 16
# magic, format version, chunk size, plaintext length, file id
_HEADER = struct.Struct(f"<{len(MAGIC)}sBIQ{FILE_ID_BYTES}s")
HEADER_BYTES = _HEADER.size
_LENGTH_AT = len(MAGIC) + 1 + 4  # the length is filled in when the writer finishes
# magic, format version, chunk size, file id, chunk index, last?, plaintext length (last only);
# the relative path follows, last, so its length needs no field.
_CHUNK_CONTEXT = struct.Struct(f"<{len(MAGIC)}sBI{FILE_ID_BYTES}sQBQ")
_MAX_CHUNK_SIZE = 1 << 30
_FILE_KEY_PURPOSE = f"sealed file v{FORMAT_VERSION}"


class SealedFileError(SleepError):
    """A sealed file did not open: damaged, cut short, moved, or sealed with another key.

    The message names the file; exit 1 (nothing a person typed was wrong).
    """


def relative_name(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, as the sealed file's associated data spells it.

    Lexical (``a/../b`` is ``b``; symlinks are not followed): a memory folder that is a
    link to another disk keeps the names its files were sealed under.

    Raises:
        ValueError: ``path`` is not under ``root``.
    """
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    if relative == "." or relative == ".." or relative.startswith(".." + os.sep):
        raise ValueError(f"{path} is not under {root}")
    return PurePosixPath(*Path(relative).parts).as_posix()


def _chunk_context(header: tuple, index: int, last: bool, length: int, name_bytes: bytes) -> bytes:
    _, version, chunk_size, _, file_id = header
    return _CHUNK_CONTEXT.pack(MAGIC, version, chunk_size, file_id, index, last,
                               length if last else 0) + name_bytes


def _chunk_count(length: int, chunk_size: int) -> int:
    """Chunks of a file of ``length`` plaintext bytes; an empty file has one, empty, chunk
    (its tag is what proves it complete)."""
    return max(1, -(-length // chunk_size))


class SealedWriter:
    """A write-only binary file that seals what is written to it, a chunk at a time.

    Holds at most one chunk of plaintext in memory. The file is complete only once
    :meth:`finish` has sealed the last chunk and filled in the header's length; one left
    unfinished (an exception) does not open. Use :func:`sealed_file` to write a file under
    the root atomically.

    Args:
        fh: a seekable binary file (the header's length is written last).
        key: the memory's 32-byte master key.
        name: the file's path relative to the root (:func:`relative_name`).
        chunk_size: plaintext bytes a chunk; the default outside tests.
    """

    def __init__(self, fh, key: bytes, name: str, *, chunk_size: int = CHUNK_SIZE):
        if not 0 < chunk_size <= _MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size {chunk_size}: 1 .. {_MAX_CHUNK_SIZE}")
        self._fh = fh
        self._name_bytes = name.encode("utf-8")
        file_id = os.urandom(FILE_ID_BYTES)
        self._header = (MAGIC, FORMAT_VERSION, chunk_size, 0, file_id)
        self._aead = AESGCM(derive_key(key, _FILE_KEY_PURPOSE, file_id))
        self._chunk_size = chunk_size
        self._header_at = fh.tell()
        fh.write(_HEADER.pack(*self._header))
        self._pending = bytearray()
        self._index = 0
        self._written = 0
        self._finished = False

    def _emit(self, plaintext, last: bool) -> None:
        nonce = os.urandom(NONCE_BYTES)
        context = _chunk_context(self._header, self._index, last, self._written, self._name_bytes)
        self._fh.write(nonce)
        self._fh.write(self._aead.encrypt(nonce, plaintext, context))
        self._index += 1

    def write(self, data) -> int:
        """Seal ``data`` (any bytes-like object); returns its length in bytes."""
        if self._finished:
            raise ValueError("write to a finished sealed file")
        view = memoryview(data).cast("B")
        size, at = len(view), 0
        self._written += size
        # A full chunk is sealed only once a byte after it arrives: until then it may be
        # the last one, whose associated data says so.
        if self._pending:
            at = min(self._chunk_size - len(self._pending), size)
            self._pending += view[:at]
            if len(self._pending) == self._chunk_size and at < size:
                self._emit(self._pending, last=False)
                self._pending.clear()
        if not self._pending:
            while size - at > self._chunk_size:
                self._emit(view[at:at + self._chunk_size], last=False)
                at += self._chunk_size
            self._pending += view[at:]
        return size

    def tell(self) -> int:
        """Plaintext bytes written so far."""
        return self._written

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        # Nothing to hand on: a partial chunk cannot be sealed before the next write.
        pass

    def finish(self) -> None:
        """Seal the last chunk and write the plaintext length into the header; idempotent."""
        if self._finished:
            return
        self._emit(self._pending, last=True)
        self._pending.clear()
        end = self._fh.tell()
        self._fh.seek(self._header_at + _LENGTH_AT)
        self._fh.write(struct.pack("<Q", self._written))
        self._fh.seek(end)
        self._finished = True

    close = finish

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()


class SealedReader(io.RawIOBase):
    """A read-only, seekable binary file over a sealed one, decrypting only what is read.

    Opening checks the header against the file's size and authenticates the last chunk,
    so the length it reports (``seek(0, 2)``) is the one that was sealed. A read then
    decrypts the chunks it touches, keeping the latest one (and the last chunk) for the
    next read; :attr:`chunks_decrypted` counts them.

    Args:
        fh: the sealed file, binary, seekable.
        key: the memory's 32-byte master key.
        name: the file's path relative to the root, as it was sealed.
        shown: how errors name the file (default ``name``).
        owns: close ``fh`` when this reader is closed.
    Raises:
        SealedFileError: not a sealed file, the wrong size, or the last chunk does not
            authenticate.
    """

    def __init__(self, fh, key: bytes, name: str, *, shown: str | None = None, owns: bool = False):
        super().__init__()
        self._fh, self._owns = fh, owns
        self._shown = shown or name
        self._name_bytes = name.encode("utf-8")
        self.chunks_decrypted = 0
        self._cached: tuple[int, memoryview] | None = None  # the chunk read last
        self._last: memoryview | None = None  # the last chunk, authenticated on opening
        self._position = 0
        header = fh.read(HEADER_BYTES)
        if len(header) < HEADER_BYTES or not header.startswith(MAGIC):
            raise SealedFileError(f"{self._shown}: not a sealed file")
        self._header = _HEADER.unpack(header)
        _, version, chunk_size, length, file_id = self._header
        if version != FORMAT_VERSION:
            raise SealedFileError(f"{self._shown}: sealed in format {version}; this version reads "
                                  f"format {FORMAT_VERSION}")
        if not 0 < chunk_size <= _MAX_CHUNK_SIZE:
            raise SealedFileError(f"{self._shown}: damaged (chunk size {chunk_size} in its header)")
        self._chunk_size, self._length = chunk_size, length
        self._chunks = _chunk_count(length, chunk_size)
        expected = HEADER_BYTES + self._chunks * CHUNK_OVERHEAD + length
        actual = fh.seek(0, io.SEEK_END)
        if actual != expected:
            raise SealedFileError(f"{self._shown}: damaged: {actual} bytes where its header "
                                  f"promises {expected} (cut short or added to)")
        self._aead = AESGCM(derive_key(key, _FILE_KEY_PURPOSE, file_id))
        self._chunk(self._chunks - 1)

    @property
    def size(self) -> int:
        """Plaintext bytes in the file."""
        return self._length

    def _plain_size(self, index: int) -> int:
        return self._length - index * self._chunk_size if index == self._chunks - 1 else self._chunk_size

    def _kept(self, index: int) -> memoryview | None:
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        return self._last if index == self._chunks - 1 else None

    def _decrypt(self, index: int, into: memoryview | None = None) -> memoryview:
        """Decrypt chunk ``index`` into ``into`` (a buffer of exactly its size: a large read
        fills its own buffer with no copy), else into a new one kept for the next read."""
        last = index == self._chunks - 1
        plain = self._plain_size(index)
        self._fh.seek(HEADER_BYTES + index * (self._chunk_size + CHUNK_OVERHEAD))
        stored = memoryview(self._fh.read(plain + CHUNK_OVERHEAD))  # a view: slices copy nothing
        if len(stored) != plain + CHUNK_OVERHEAD:
            raise SealedFileError(f"{self._shown}: damaged: cut short at chunk {index + 1}")
        context = _chunk_context(self._header, index, last, self._length, self._name_bytes)
        target = into if into is not None else memoryview(bytearray(plain))
        try:
            self._aead.decrypt_into(stored[:NONCE_BYTES], stored[NONCE_BYTES:], context, target)
        except InvalidTag:
            target[:] = bytes(plain)  # what was deciphered before the tag failed is not to be read
            raise SealedFileError(f"{self._shown}: damaged or sealed with another key "
                                  f"(chunk {index + 1} of {self._chunks} does not authenticate)") from None
        self.chunks_decrypted += 1
        if into is None:
            if last:
                self._last = target
            else:
                self._cached = (index, target)
        return target

    def _chunk(self, index: int) -> memoryview:
        kept = self._kept(index)
        return kept if kept is not None else self._decrypt(index)

    def read(self, size: int | None = -1) -> bytes:
        self._check_open()
        available = max(0, self._length - self._position)
        size = available if size is None or size < 0 else min(size, available)
        index, offset = divmod(self._position, self._chunk_size)
        if size and offset + size <= self._plain_size(index):  # within one chunk: one copy
            self._position += size
            return bytes(self._chunk(index)[offset:offset + size])
        out = bytearray(size)
        self.readinto(out)
        return bytes(out)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer) -> int:
        self._check_open()
        target = memoryview(buffer).cast("B")
        size = max(0, min(len(target), self._length - self._position))
        done = 0
        while done < size:
            index, offset = divmod(self._position, self._chunk_size)
            plain = self._plain_size(index)
            if offset == 0 and size - done >= plain and self._kept(index) is None:
                self._decrypt(index, into=target[done:done + plain])
                step = plain
            else:
                step = min(plain - offset, size - done)
                target[done:done + step] = self._chunk(index)[offset:offset + step]
            done += step
            self._position += step
        return done

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}.get(whence)
        if base is None:
            raise ValueError(f"whence {whence}: 0, 1 or 2")
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        self._check_open()
        return self._position

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed and self._owns:
            self._fh.close()
        self._cached = self._last = None
        super().close()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on a closed sealed file")


def seal_bytes(data, key: bytes, name: str, *, chunk_size: int = CHUNK_SIZE) -> bytes:
    """``data`` sealed as the file ``name`` (relative to the root) would be."""
    out = io.BytesIO()
    with SealedWriter(out, key, name, chunk_size=chunk_size) as writer:
        writer.write(data)
    return out.getvalue()


def unseal_bytes(sealed, key: bytes, name: str) -> bytes:
    """The plaintext of a sealed file's bytes; the inverse of :func:`seal_bytes`.

    Raises:
        SealedFileError: damaged, not sealed as ``name``, or sealed with another key.
    """
    with SealedReader(io.BytesIO(sealed), key, name) as reader:
        return reader.read()


@contextlib.contextmanager
def sealed_file(final: Path, root: Path, key: bytes, mode: int = 0o600) -> Iterator[SealedWriter]:
    """Yield a :class:`SealedWriter`; on success the sealed file becomes ``final`` atomically.

    The associated data names ``final`` (not the temporary name written first), relative
    to ``root``. On an exception nothing is left behind (:func:`core.atomic.atomic_file`).
    """
    name = relative_name(final, root)
    with atomic_file(final, mode) as fh:
        writer = SealedWriter(fh, key, name)
        yield writer
        writer.finish()


def write_sealed(final: Path, root: Path, key: bytes, data, mode: int = 0o600) -> Path:
    """Seal ``data`` into ``final`` atomically; returns ``final``."""
    with sealed_file(final, root, key, mode) as writer:
        writer.write(data)
    return final


def open_sealed(path: Path, root: Path, key: bytes) -> SealedReader:
    """Open the sealed file at ``path`` (under ``root``) for reading; close it when done.

    Raises:
        FileNotFoundError: no file at ``path``.
        SealedFileError: damaged, moved from where it was sealed, or sealed with another key.
    """
    fh = open(path, "rb")  # noqa: SIM115 (the reader owns it and closes it)
    try:
        return SealedReader(fh, key, relative_name(path, root), shown=str(path), owns=True)
    except BaseException:
        fh.close()
        raise


def read_sealed(path: Path, root: Path, key: bytes) -> bytes:
    """The whole plaintext of the sealed file at ``path``."""
    with open_sealed(path, root, key) as reader:
        return reader.read()


def is_sealed(path: Path) -> bool:
    """Whether the file at ``path`` starts as a sealed file does (its magic)."""
    with open(path, "rb") as fh:
        return fh.read(len(MAGIC)) == MAGIC
