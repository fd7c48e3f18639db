"""What a sealed memory (``memory.encryption: on``) costs a search, at a size past a night.

    python bench/sealed_search.py                 # 400k rows of 256-d over 10 days, ~2 min
    python bench/sealed_search.py --rows 2000000

The same memory (the same vectors, rows and days as ``bench/integrity.py`` fills) is written
twice: into a plain root (the baseline, measured in the same run) and into a sealed one
(its database through SQLCipher, its shards sealed in 1 MiB chunks). In each, as a query
process meets it:

- the first exact search in a process (the plain one maps every shard; the sealed one
  decrypts each whole into its cache, :data:`memory.shards.SEALED_CACHE_BYTES`);
- an exact search after it (warm: the cache);
- the first IVF-PQ search of a process (index cached on disk, sealed in the sealed root:
  read and decrypted), and IVF-PQ searches after it (warm: the re-ranked rows are read
  from the shards, a sealed shard's chunk by chunk, :class:`memory.shards.SealedRows`).
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.append(str(Path(__file__).resolve().parent))

from integrity import _fill, _forget_caches, _timed_search  # noqa: E402  (bench/integrity.py)

from core import vault  # noqa: E402
from core.keys import ScryptCost, init_key  # noqa: E402
from core.paths import Paths  # noqa: E402
from memory.db import open_database  # noqa: E402

search_module = sys.modules["memory.search"]


def _measure(root: Path, rows: int, days: int, dim: int, sealed: bool) -> dict[str, float]:
    if sealed:
        # The unlock is not what is measured here (bench/encryption.py has it): a cheap scrypt.
        vault.register(root, init_key(root / "memory" / "key.json", "bench", cost=ScryptCost(n=2**12)))
    paths = Paths.at(root)
    engine = open_database(paths.database)
    queries = _fill(paths, engine, rows, days, dim)
    exact = search_module.SearchOptions(index="exact")
    ivfpq = search_module.SearchOptions(index="auto", faiss_threshold=0, index_ram_gb=1e-6)
    _forget_caches()
    _timed_search(engine, paths, queries, ivfpq, first_only=True)  # builds the index and caches it on disk
    figures = {}
    _forget_caches()
    figures["first exact search in a process"] = _timed_search(engine, paths, queries, exact, first_only=True)
    figures["exact search, warm"] = _timed_search(engine, paths, queries, exact, first_only=False)
    _forget_caches()
    figures["first IVF-PQ search in a process"] = _timed_search(engine, paths, queries, ivfpq, first_only=True)
    _forget_caches()
    figures["IVF-PQ search, warm"] = _timed_search(engine, paths, queries, ivfpq, first_only=False)
    engine.dispose()
    _forget_caches()
    vault.forget_all()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--dim", type=int, default=256)
    args = parser.parse_args()
    print(f"{platform.node()} {platform.machine()}, python {platform.python_version()}; "
          f"{args.rows:,} rows of {args.dim}-d float16 over {args.days} days")
    with tempfile.TemporaryDirectory(prefix="sealed-search-bench-") as tmp:
        plain = _measure(Path(tmp) / "plain", args.rows, args.days, args.dim, sealed=False)
        sealed = _measure(Path(tmp) / "sealed", args.rows, args.days, args.dim, sealed=True)
    print(f"{'':<36}{'plain ms':>10}{'sealed ms':>11}{'ratio':>8}")
    for name, seconds in plain.items():
        print(f"{name:<36}{seconds * 1e3:>10.1f}{sealed[name] * 1e3:>11.1f}{sealed[name] / seconds:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
