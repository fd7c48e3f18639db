"""What sealing costs: AES-256-GCM sealed files (core/sealed.py) against today's shard write.

    python bench/sealed.py [--mib 256] [--repeats 3]

Prints MB/s (10^6 bytes of plaintext a second, best of the repeats, in memory: no disk) for
sealing and opening a file (whole, into new memory, and streamed through one buffer), and for the baseline every shard write pays today, its SHA-256
block sums (memory/integrity.py), with the ratio of each to it; then what reading one
row of a sealed shard costs (a chunk decrypted) against a plain read of that row.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.sealed import SealedReader, seal_bytes, unseal_bytes
from memory.integrity import SummingWriter

KEY = os.urandom(32)
NAME = "memory/embeddings/vision/jepa@2026-01-15/2026-01-15-bench.npy"


def _best(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="plaintext size in MiB (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; the best is printed")
    args = parser.parse_args()
    data = os.urandom(args.mib << 20)
    mb = len(data) / 1e6
    sealed = seal_bytes(data, KEY, NAME)
    assert unseal_bytes(sealed, KEY, NAME) == data

    def sums() -> None:
        SummingWriter(io.BytesIO()).write(data)

    baseline = mb / _best(args.repeats, sums)
    seal = mb / _best(args.repeats, lambda: seal_bytes(data, KEY, NAME))
    unseal = mb / _best(args.repeats, lambda: unseal_bytes(sealed, KEY, NAME))
    buffer = bytearray(16 << 20)

    def stream() -> None:
        reader = SealedReader(io.BytesIO(sealed), KEY, NAME)
        while reader.readinto(buffer):
            pass

    streamed = mb / _best(args.repeats, stream)
    print(f"{args.mib} MiB in memory, best of {args.repeats}")
    print(f"  baseline: copy + SHA-256 block sums  {baseline:8.0f} MB/s")
    print(f"  seal (AES-256-GCM, 1 MiB chunks)     {seal:8.0f} MB/s  ({seal / baseline:.2f}x baseline)")
    print(f"  open, whole into new bytes           {unseal:8.0f} MB/s  ({unseal / baseline:.2f}x baseline)")
    print(f"  open, streamed into a 16 MiB buffer  {streamed:8.0f} MB/s  ({streamed / baseline:.2f}x baseline)")

    row, reads = 512, 200  # a 256-d float16 vector
    offsets = [int.from_bytes(os.urandom(4)) % (len(data) - row) for _ in range(reads)]
    plain = io.BytesIO(data)

    def plain_rows() -> None:
        for at in offsets:
            plain.seek(at)
            plain.read(row)

    reader = SealedReader(io.BytesIO(sealed), KEY, NAME)

    def sealed_rows() -> None:
        for at in offsets:
            reader.seek(at)
            reader.read(row)

    plain_us = _best(args.repeats, plain_rows) / reads * 1e6
    sealed_us = _best(args.repeats, sealed_rows) / reads * 1e6
    print(f"  a random row of 512 B: plain {plain_us:.1f} us, sealed {sealed_us:.0f} us "
          f"({sealed_us / plain_us:.0f}x; one 1 MiB chunk decrypted per row)")


if __name__ == "__main__":
    main()
