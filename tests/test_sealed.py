"""Sealed files (core/sealed.py): round trips, every kind of tampering refused, random access."""
from __future__ import annotations

import io
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import SleepError
from core.sealed import (
    CHUNK_OVERHEAD,
    CHUNK_SIZE,
    HEADER_BYTES,
    SealedFileError,
    SealedReader,
    SealedWriter,
    is_sealed,
    open_sealed,
    read_sealed,
    relative_name,
    seal_bytes,
    sealed_file,
    unseal_bytes,
    write_sealed,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
MARKER = b"coffee with Ana at the harbour"
NAME = "memory/embeddings/vision/jepa@2026-01-15/2026-01-15-abc.npy"


def _chunk_at(index: int) -> int:
    """Where chunk ``index`` of a default-size sealed file starts."""
    return HEADER_BYTES + index * (CHUNK_SIZE + CHUNK_OVERHEAD)


def _marked(size: int) -> bytes:
    """``size`` random bytes with :data:`MARKER` at the start, middle and end."""
    data = bytearray(os.urandom(size))
    for at in (0, size // 2, size - len(MARKER)):
        if size >= len(MARKER):
            data[at:at + len(MARKER)] = MARKER
    return bytes(data)


@pytest.mark.parametrize("size", [0, 1, 1000, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1,
                                  3 * CHUNK_SIZE + 12345],
                         ids=["empty", "1B", "1kB", "1MiB-1", "1MiB", "1MiB+1", "3.01MiB"])
def test_round_trip(size):
    data = _marked(size)
    sealed = seal_bytes(data, KEY, NAME)
    assert unseal_bytes(sealed, KEY, NAME) == data
    chunks = max(1, -(-size // CHUNK_SIZE))
    assert len(sealed) == HEADER_BYTES + chunks * CHUNK_OVERHEAD + size


def test_writes_of_any_size_seal_the_same_plaintext():
    data = os.urandom(4 * CHUNK_SIZE + 77)
    out = io.BytesIO()
    writer = SealedWriter(out, KEY, NAME)
    at = 0
    for step in [1, CHUNK_SIZE - 1, CHUNK_SIZE, 7, 2 * CHUNK_SIZE + 3, 10**9]:
        writer.write(data[at:at + step])
        at += step
    writer.finish()
    assert writer.tell() == len(data)
    assert unseal_bytes(out.getvalue(), KEY, NAME) == data


def test_no_plaintext_in_a_sealed_file(tmp_path):
    data = _marked(2 * CHUNK_SIZE + 5)
    path = write_sealed(tmp_path / "memory" / "f.bin", tmp_path, KEY, data)
    stored = path.read_bytes()
    assert MARKER not in stored
    assert data[1000:1032] not in stored
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_sealing_twice_gives_different_bytes():
    """A fresh file id and nonces each time: equal files cannot be told equal on disk."""
    assert seal_bytes(MARKER, KEY, NAME) != seal_bytes(MARKER, KEY, NAME)


def _fails(sealed: bytes, name: str = NAME, key: bytes = KEY) -> str:
    with pytest.raises(SealedFileError) as caught:
        unseal_bytes(sealed, key, name)
    return str(caught.value)


def test_wrong_key_fails_naming_the_file():
    message = _fails(seal_bytes(MARKER, KEY, NAME), key=OTHER_KEY)
    assert NAME in message and "damaged or sealed with another key" in message
    assert isinstance(SealedFileError(""), SleepError)


@pytest.mark.parametrize("where", ["header magic", "header chunk size", "file id", "nonce",
                                   "ciphertext", "tag", "last chunk"])
def test_a_flipped_byte_fails(where):
    sealed = bytearray(seal_bytes(os.urandom(2 * CHUNK_SIZE + 100), KEY, NAME))
    at = {"header magic": 0, "header chunk size": 10, "file id": HEADER_BYTES - 1,
          "nonce": _chunk_at(1), "ciphertext": _chunk_at(1) + 500,
          "tag": _chunk_at(2) - 1, "last chunk": len(sealed) - 40}[where]
    sealed[at] ^= 0x01
    _fails(bytes(sealed))


def test_a_flipped_byte_in_a_chunk_fails_when_that_chunk_is_read():
    sealed = bytearray(seal_bytes(os.urandom(3 * CHUNK_SIZE), KEY, NAME))
    sealed[_chunk_at(1) + 99] ^= 0x80
    reader = SealedReader(io.BytesIO(bytes(sealed)), KEY, NAME)
    assert len(reader.read(CHUNK_SIZE)) == CHUNK_SIZE  # chunk 0 is sound
    with pytest.raises(SealedFileError, match="chunk 2 of 3"):
        reader.read(10)


def test_a_chunk_that_fails_leaves_nothing_of_itself_in_the_callers_buffer():
    """Read straight into the caller's buffer, a chunk whose tag fails is zeroed, not left
    half-deciphered (unauthenticated plaintext)."""
    data = bytes(range(256)) * (3 * CHUNK_SIZE // 256)
    sealed = bytearray(seal_bytes(data, KEY, NAME))
    sealed[_chunk_at(1) + CHUNK_OVERHEAD + 10] ^= 0x01  # a ciphertext byte of chunk 1
    reader = SealedReader(io.BytesIO(bytes(sealed)), KEY, NAME)
    buffer = bytearray(b"\xff" * (2 * CHUNK_SIZE))
    with pytest.raises(SealedFileError):
        reader.readinto(buffer)
    assert buffer[:CHUNK_SIZE] == data[:CHUNK_SIZE]  # chunk 0 is sound
    assert buffer[CHUNK_SIZE:] == bytes(CHUNK_SIZE)


def test_a_truncated_file_fails():
    sealed = seal_bytes(os.urandom(2 * CHUNK_SIZE + 100), KEY, NAME)
    for cut in (len(sealed) - 1, _chunk_at(2), _chunk_at(1) + 10, HEADER_BYTES, 5):
        _fails(sealed[:cut])


def test_whole_chunks_dropped_with_the_header_length_fixed_fail():
    """Cut at a chunk boundary and a length edited to match: the new last chunk was not sealed last."""
    sealed = bytearray(seal_bytes(os.urandom(3 * CHUNK_SIZE), KEY, NAME))
    cut = sealed[:_chunk_at(2)]
    cut[HEADER_BYTES - 16 - 8:HEADER_BYTES - 16] = struct.pack("<Q", 2 * CHUNK_SIZE)
    _fails(bytes(cut))


def test_an_extended_file_fails():
    sealed = seal_bytes(os.urandom(100), KEY, NAME)
    _fails(sealed + b"\0")
    _fails(sealed + sealed[HEADER_BYTES:])


def test_swapped_chunks_fail():
    sealed = seal_bytes(os.urandom(3 * CHUNK_SIZE), KEY, NAME)
    chunk = CHUNK_SIZE + CHUNK_OVERHEAD
    first, second = sealed[_chunk_at(0):_chunk_at(1)], sealed[_chunk_at(1):_chunk_at(2)]
    swapped = sealed[:HEADER_BYTES] + second + first + sealed[_chunk_at(2):]
    assert len(first) == chunk and len(swapped) == len(sealed)
    _fails(swapped)


def test_a_chunk_from_another_file_of_the_same_path_fails():
    """An earlier version of the same shard: same key and path, another file id."""
    old = seal_bytes(os.urandom(2 * CHUNK_SIZE + 1), KEY, NAME)
    new = seal_bytes(os.urandom(2 * CHUNK_SIZE + 1), KEY, NAME)
    mixed = new[:_chunk_at(1)] + old[_chunk_at(1):_chunk_at(2)] + new[_chunk_at(2):]
    _fails(mixed)


def test_a_file_moved_to_another_path_fails(tmp_path):
    data = _marked(5000)
    sealed = write_sealed(tmp_path / "memory" / "keep" / "2026-01-15" / "12.jpg", tmp_path, KEY, data)
    assert read_sealed(sealed, tmp_path, KEY) == data
    moved = tmp_path / "memory" / "keep" / "2026-01-15" / "13.jpg"
    shutil.move(sealed, moved)
    with pytest.raises(SealedFileError, match="13.jpg: damaged or sealed with another key"):
        read_sealed(moved, tmp_path, KEY)
    # Its place under another root is another path too.
    other_root = tmp_path / "elsewhere"
    (other_root / "memory" / "keep" / "2026-01-15").mkdir(parents=True)
    shutil.copy(moved, other_root / "memory" / "keep" / "2026-01-15" / "12.jpg")
    assert read_sealed(other_root / "memory" / "keep" / "2026-01-15" / "12.jpg", other_root, KEY) == data


def test_not_a_sealed_file(tmp_path):
    plain = tmp_path / "memory" / "plain.npy"
    plain.parent.mkdir()
    np.save(plain, np.zeros(3))
    assert not is_sealed(plain)
    with pytest.raises(SealedFileError, match="not a sealed file"):
        read_sealed(plain, tmp_path, KEY)
    assert is_sealed(write_sealed(tmp_path / "memory" / "s.bin", tmp_path, KEY, b"x"))


def test_relative_name():
    root = Path("/srv/sleep")
    assert relative_name(root / "memory" / "a.npy", root) == "memory/a.npy"
    assert relative_name(Path("/srv/sleep/data/../memory/a.npy"), root) == "memory/a.npy"
    for outside in (Path("/srv/other/a.npy"), root):
        with pytest.raises(ValueError):
            relative_name(outside, root)


def test_random_access_decrypts_only_the_chunks_read():
    data = os.urandom(8 * CHUNK_SIZE)
    reader = SealedReader(io.BytesIO(seal_bytes(data, KEY, NAME)), KEY, NAME)
    assert reader.chunks_decrypted == 1  # opening authenticates the last chunk (the length)
    at = 5 * CHUNK_SIZE + 1000
    reader.seek(at)
    assert reader.read(100) == data[at:at + 100]
    assert reader.chunks_decrypted == 2
    assert reader.read(100) == data[at + 100:at + 200]  # the same chunk again: kept
    assert reader.chunks_decrypted == 2
    at = 2 * CHUNK_SIZE - 50  # across a boundary: two chunks
    reader.seek(at)
    assert reader.read(100) == data[at:at + 100]
    assert reader.chunks_decrypted == 4
    assert reader.seek(0, io.SEEK_END) == len(data) and reader.read(10) == b""
    assert reader.seek(-10, io.SEEK_CUR) == len(data) - 10
    buffer = bytearray(20)
    assert reader.readinto(buffer) == 10 and bytes(buffer[:10]) == data[-10:]
    assert reader.chunks_decrypted == 4  # the last chunk was kept from the start


def test_np_save_and_load_through_the_writer_and_reader(tmp_path):
    rows = np.random.default_rng(0).standard_normal((6000, 256)).astype(np.float16)  # ~3 MiB
    final = tmp_path / "memory" / "embeddings" / "shard.npy"
    with sealed_file(final, tmp_path, KEY) as writer:
        np.save(writer, rows, allow_pickle=False)
    assert list(final.parent.iterdir()) == [final]  # no temporary file left
    with open_sealed(final, tmp_path, KEY) as reader:
        assert np.array_equal(np.load(reader, allow_pickle=False), rows)
    # A row read by offset, as a search reads a few rows of a large shard.
    with open_sealed(final, tmp_path, KEY) as reader:
        assert np.lib.format.read_magic(reader) == (1, 0)
        shape, _, dtype = np.lib.format.read_array_header_1_0(reader)
        data_at = reader.tell()
        assert shape == rows.shape and reader.chunks_decrypted == 2  # the last, then the first
        row = 2500  # in chunk 1 (of 0..2)
        reader.seek(data_at + row * rows.shape[1] * dtype.itemsize)
        got = np.frombuffer(reader.read(rows.shape[1] * dtype.itemsize), dtype=dtype)
        assert np.array_equal(got, rows[row]) and reader.chunks_decrypted == 3


def test_a_failed_write_leaves_nothing(tmp_path):
    final = tmp_path / "memory" / "f.npy"
    with pytest.raises(RuntimeError), sealed_file(final, tmp_path, KEY) as writer:
        writer.write(b"x" * (CHUNK_SIZE + 1))
        raise RuntimeError("the stage failed")
    assert not final.exists() and list(final.parent.iterdir()) == []


def test_an_unfinished_writer_leaves_a_file_that_does_not_open():
    out = io.BytesIO()
    SealedWriter(out, KEY, NAME).write(os.urandom(CHUNK_SIZE + 5))
    _fails(out.getvalue())


def test_pil_image_round_trip(tmp_path):
    picture = Image.new("RGB", (64, 48))
    picture.putdata([(x % 256, (x * 7) % 256, 90) for x in range(64 * 48)])
    final = tmp_path / "memory" / "keep" / "12.png"
    with sealed_file(final, tmp_path, KEY) as writer:
        picture.save(writer, format="PNG")
    with open_sealed(final, tmp_path, KEY) as reader, Image.open(reader) as opened:
        assert np.array_equal(np.asarray(opened.convert("RGB")), np.asarray(picture))


def test_soundfile_reads_a_sealed_flac(tmp_path):
    soundfile = pytest.importorskip("soundfile")
    wave = (np.sin(np.arange(16000) / 10) * 20000).astype(np.int16)
    buffer = io.BytesIO()  # libsndfile seeks back while writing: sealed from memory
    soundfile.write(buffer, wave, 16000, format="FLAC", subtype="PCM_16")
    final = write_sealed(tmp_path / "memory" / "keep" / "12.flac", tmp_path, KEY, buffer.getvalue())
    with open_sealed(final, tmp_path, KEY) as reader:
        got, rate = soundfile.read(reader, dtype="int16")
    assert rate == 16000 and np.array_equal(got, wave)


def test_torch_save_and_load_through_the_writer_and_reader(tmp_path):
    torch = pytest.importorskip("torch")
    state = {"weight": torch.arange(300_000, dtype=torch.float32).reshape(300, 1000), "step": 7}
    final = tmp_path / "checkpoints" / "model.pt"
    with sealed_file(final, tmp_path, KEY) as writer:
        torch.save(state, writer)
    assert b"weight" not in final.read_bytes()
    with open_sealed(final, tmp_path, KEY) as reader:
        loaded = torch.load(reader, map_location="cpu", weights_only=True)
    assert loaded["step"] == 7 and torch.equal(loaded["weight"], state["weight"])
