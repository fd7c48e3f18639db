"""IVF-PQ for a memory larger than RAM: codes in the index, exact re-ranking from the shards."""
from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
from memfill import DIM, day_vectors, fill

from core.config import load_config
from core.errors import ConfigError
from core.paths import Paths
from memory.db import open_database
from memory.exact import Block, exact_topk_batch, recall_at_k
from memory.faiss_index import (
    TunedIndex,
    build_index,
    gather_rows,
    pq_codes,
)
from memory.search import _INDEXES, SearchOptions
from memory.store import search

search_module = importlib.import_module("memory.search")  # `memory.search` the package exports is a function

DAYS = ["2026-01-10", "2026-01-11", "2026-01-12"]


@pytest.fixture
def mem(root):
    paths = Paths.at(root)
    engine = open_database(paths.database)
    _INDEXES.clear()
    yield engine, paths
    _INDEXES.clear()
    engine.dispose()


def _clustered(n: int, dim: int, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Tight clusters of near-duplicate moments, as a day's frames are."""
    centres = rng.standard_normal((n_clusters, dim))
    x = centres[rng.integers(0, n_clusters, n)] + 0.3 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _mapped_blocks(tmp_path, vectors: np.ndarray, n_blocks: int) -> list[Block]:
    """``vectors`` as float16 ``.npy`` memory maps, one per block, as the shards hold them."""
    blocks, offset = [], 0
    for i, part in enumerate(np.array_split(vectors, n_blocks)):
        path = tmp_path / f"block{i}.npy"
        np.save(path, part.astype(np.float16))
        blocks.append(Block(offset, np.load(path, mmap_mode="r")))
        offset += len(part)
    return blocks


def test_gather_rows_reads_ids_across_blocks_in_any_order(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((600, 8)).astype(np.float32)
    blocks = _mapped_blocks(tmp_path, vectors[:500], 3)
    blocks.append(Block(500, vectors[500:].astype(np.float16)))  # in RAM, not a memory map
    ids = np.array([499, 0, 170, 3, 170, 333, 166, 167, 599, 500])
    expected = vectors.astype(np.float16)[ids].astype(np.float32)
    assert np.array_equal(gather_rows(blocks, ids), expected)
    assert np.array_equal(gather_rows(blocks, ids, prefetch=True), expected)


def test_ivfpq_keeps_recall_on_a_clustered_memory(tmp_path):
    rng = np.random.default_rng(0)
    dim = 64
    vectors = _clustered(6000, dim, 60, rng)
    blocks = _mapped_blocks(tmp_path, vectors, 3)
    built = build_index(blocks, "ivfpq", min_recall=0.95, fallback_flat=False)
    assert built is not None and built.kind == "ivfpq"
    assert built.index.code_size == pq_codes(dim) == dim // 2  # 4x smaller than float16 rows
    # Unseen queries: moments like stored ones.
    queries = _clustered(100, dim, 60, np.random.default_rng(0))
    queries += 0.02 * np.random.default_rng(1).standard_normal(queries.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    _, truth = exact_topk_batch(blocks, queries, 10)
    scores, found = built.search(queries, 10)
    assert recall_at_k(found, truth) >= 0.95
    # Scores are re-ranked exactly from the stored rows, not the codes' estimates.
    rows = vectors.astype(np.float16).astype(np.float32)
    assert np.allclose(scores, np.einsum("qkd,qd->qk", rows[found], queries), atol=1e-6)


def test_ivfpq_returns_only_allowed_rows(tmp_path):
    vectors = _clustered(3000, 32, 30, np.random.default_rng(2))
    blocks = _mapped_blocks(tmp_path, vectors, 2)
    built = build_index(blocks, "ivfpq", fallback_flat=False)
    assert built is not None and built.kind == "ivfpq"
    allowed = np.zeros(len(vectors), bool)
    allowed[1500:] = True
    built.param = built.index.nlist  # every list: the filter alone decides
    _, found = built.search(vectors[:5], 10, allowed)
    assert (found >= 1500).all()


def test_auto_builds_ivfpq_where_ivf_would_exceed_the_ram_budget(mem):
    engine, paths = mem
    fill(engine, paths, DAYS, n_clips=400)
    rng = np.random.default_rng(3)
    queries = day_vectors(20, 1) + 0.05 * rng.standard_normal((20, DIM)).astype(np.float32)
    small = SearchOptions(index="auto", faiss_threshold=0, index_ram_gb=1e-6)

    def ids(q, options):
        return [h.clip_id for h in search(engine, paths, space="vision", query=q, topk=10,
                                          options=options)]

    exact = [ids(q, SearchOptions(index="exact")) for q in queries]
    found = [ids(q, small) for q in queries]
    assert sum(len(set(e) & set(f)) for e, f in zip(exact, found)) / (10 * len(queries)) >= 0.9
    (index_file,) = (paths.memory / "index").rglob("*.faiss")
    assert index_file.name.startswith("ivfpq-")
    meta = json.loads(index_file.with_suffix(".json").read_text())
    assert meta["kind"] == "ivfpq" and meta["rerank_factor"] >= 1
    # A new process loads it from disk and re-ranks from the shards again.
    _INDEXES.clear()
    assert [ids(q, small) for q in queries] == found
    (built,) = _INDEXES.values()
    assert built.kind == "ivfpq" and built.rows is not None


def test_a_cached_index_gone_or_garbled_is_built_again(mem, caplog):
    # Another process rebuilding the cache removes the file between this one's check and
    # its read; or the file is damaged: a cache, so built again, with a warning.
    engine, paths = mem
    fill(engine, paths, DAYS, n_clips=400)
    options = SearchOptions(index="auto", faiss_threshold=0)
    query = day_vectors(1, 1)[0]
    first = search(engine, paths, space="vision", query=query, options=options)
    (index_file,) = (paths.memory / "index").rglob("*.faiss")
    index_file.write_bytes(b"not an index")
    _INDEXES.clear()
    with caplog.at_level("WARNING", logger="memory.search"):
        assert search(engine, paths, space="vision", query=query, options=options) == first
    assert "did not load" in caplog.text
    real_read = search_module._read_index

    def removed_meanwhile(vault, file):
        file.unlink()
        return real_read(vault, file)

    _INDEXES.clear()
    caplog.clear()
    with caplog.at_level("WARNING", logger="memory.search"), \
            pytest.MonkeyPatch.context() as patch:
        patch.setattr(search_module, "_read_index", removed_meanwhile)
        assert search(engine, paths, space="vision", query=query, options=options) == first
    assert "did not load" in caplog.text


def test_auto_within_the_ram_budget_still_builds_ivf(mem):
    engine, paths = mem
    fill(engine, paths, DAYS, n_clips=400)
    search(engine, paths, space="vision", query=day_vectors(1, 1)[0],
           options=SearchOptions(index="auto", faiss_threshold=0))
    (index_file,) = (paths.memory / "index").rglob("*.faiss")
    assert index_file.name.startswith("ivf-")


def test_flat_over_the_ram_budget_searches_exactly_without_an_index(mem):
    engine, paths = mem
    fill(engine, paths, DAYS, n_clips=100)
    query = day_vectors(1, 2)[0]
    exact = search(engine, paths, space="vision", query=query, options=SearchOptions(index="exact"))
    over = SearchOptions(index="flat", faiss_threshold=0, index_ram_gb=1e-6)
    assert search(engine, paths, space="vision", query=query, options=over) == exact
    assert not any(isinstance(v, TunedIndex) for v in _INDEXES.values())
    within = SearchOptions(index="flat", faiss_threshold=0)
    flat = search(engine, paths, space="vision", query=query, options=within)
    assert [h.clip_id for h in flat] == [h.clip_id for h in exact]
    assert [v.kind for v in _INDEXES.values()] == ["flat"]


def test_index_ram_budget_is_validated():
    assert load_config(None, ["memory.search.index=ivfpq"]).memory.search.index == "ivfpq"
    with pytest.raises(ConfigError, match="memory.search.index_ram_gb"):
        load_config(None, ["memory.search.index_ram_gb=0"])
