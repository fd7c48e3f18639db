"""The embedding store and search: write, replace, versions, filters, FAISS, permissions."""
from __future__ import annotations

import stat

import numpy as np
import pytest
from memfill import DIM, add_day, day_vectors, embed_day, fill
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.paths import Paths
from memory.catalog import Shard, ShardRow
from memory.db import open_database
from memory.exact import Block, exact_topk, exact_topk_batch
from memory.search import SearchOptions
from memory.store import EmbeddingRow, latest_version, search, write_embeddings

DAYS = ["2026-01-10", "2026-01-11", "2026-01-12"]


@pytest.fixture
def mem(root):
    paths = Paths.at(root)
    engine = open_database(paths.database)
    yield engine, paths
    engine.dispose()


def _unit(v):
    return v / np.linalg.norm(v)


def test_search_finds_the_stored_moment_with_its_details(mem):
    engine, paths = mem
    days = fill(engine, paths, DAYS)
    ids, vectors = days["2026-01-11"]
    hits = search(engine, paths, space="vision", query=vectors[7] + 0.001, topk=5)
    top = hits[0]
    assert top.clip_id == ids[7] and top.score > 0.999
    assert top.date == "2026-01-11" and top.model_version == "jepa@2026-01-01"
    assert top.source_path == "data/raw/2026-01-11/cam.mp4"
    assert (top.start_s, top.end_s) == (21.0, 24.0)
    assert top.wall_start == "2026-01-11T08:00:21"
    assert top.frame_path.startswith("data/frames/2026-01-11/") and top.frame_path.endswith("-1.jpg")
    assert [h.score for h in hits] == sorted([h.score for h in hits], reverse=True)


def test_scores_are_cosine_similarities(mem):
    engine, paths = mem
    ids = add_day(engine, paths, DAYS[0], 3)
    vectors = np.array([[1, 0], [1, 1], [0, 1]], np.float32)
    write_embeddings(engine, paths, space="vision", model_version="m@1", date=DAYS[0],
                     rows=[EmbeddingRow(c, "vision") for c in ids], vectors=vectors * 5)
    hits = search(engine, paths, space="vision", query=np.array([2.0, 0.0]), topk=3)
    assert [h.clip_id for h in hits] == ids
    assert [round(h.score, 3) for h in hits] == [1.0, round(1 / np.sqrt(2), 3), 0.0]


def test_writing_a_key_again_replaces_its_shard_and_rows(mem):
    engine, paths = mem
    ids = add_day(engine, paths, DAYS[0], 10)
    embed_day(engine, paths, DAYS[0], ids, seed=1)
    first = sorted(paths.embeddings.rglob("*.npy"))
    embed_day(engine, paths, DAYS[0], ids[:6], seed=2)
    files = sorted(paths.embeddings.rglob("*.npy"))
    assert len(files) == 1 and files != first
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Shard)) == 1
        assert s.scalar(select(func.count()).select_from(ShardRow)) == 6
    assert len(search(engine, paths, space="vision", query=np.ones(DIM), topk=50)) == 6


def test_a_write_killed_before_its_commit_leaves_no_file_after_the_rerun(mem):
    # Killed between its shard file and its commit, a write leaves a whole file no row names;
    # the rerun's file gets a new name, so it removes the unnamed one (the fault matrix).
    engine, paths = mem
    ids = add_day(engine, paths, DAYS[0], 10)
    embed_day(engine, paths, DAYS[0], ids, seed=1)
    (written,) = paths.embeddings.rglob("*.npy")
    orphan = written.with_name(f"{DAYS[0]}-000000000000.npy")
    orphan.write_bytes(written.read_bytes())
    other_day = written.with_name(f"{DAYS[1]}-000000000000.npy")
    other_day.write_bytes(written.read_bytes())  # another day's key: not this write's business
    embed_day(engine, paths, DAYS[0], ids, seed=2)
    assert not orphan.exists() and other_day.exists()
    assert len(list(paths.embeddings.rglob(f"{DAYS[0]}-*.npy"))) == 1


def test_search_stays_in_one_model_version(mem):
    engine, paths = mem
    ids = add_day(engine, paths, DAYS[0], 10)
    embed_day(engine, paths, DAYS[0], ids, version="jepa@2026-01-01")
    embed_day(engine, paths, DAYS[0], ids[:4], version="jepa@2026-01-02", seed=5)
    assert latest_version(engine, "vision") == "jepa@2026-01-02"
    latest = search(engine, paths, space="vision", query=np.ones(DIM), topk=50)
    assert {h.model_version for h in latest} == {"jepa@2026-01-02"} and len(latest) == 4
    old = search(engine, paths, space="vision", query=np.ones(DIM), topk=50,
                 model_version="jepa@2026-01-01")
    assert {h.model_version for h in old} == {"jepa@2026-01-01"} and len(old) == 10


def test_date_range_filter(mem):
    engine, paths = mem
    fill(engine, paths, DAYS, n_clips=20)
    hits = search(engine, paths, space="vision", query=np.ones(DIM), topk=100,
                  date_from="2026-01-11", date_to="2026-01-12")
    assert len(hits) == 40 and {h.date for h in hits} == {"2026-01-11", "2026-01-12"}
    assert search(engine, paths, space="vision", query=np.ones(DIM), date_from="2026-02-01") == []


def test_modality_filter_still_returns_topk(mem):
    engine, paths = mem
    ids = add_day(engine, paths, DAYS[0], 30)
    rng = np.random.default_rng(0)
    query = _unit(rng.standard_normal(DIM)).astype(np.float32)
    # Vision rows all close to the query, audio rows far: an unfiltered top-5 is all vision.
    vision = query + 0.1 * rng.standard_normal((30, DIM)).astype(np.float32)
    audio = -query + 0.5 * rng.standard_normal((30, DIM)).astype(np.float32)
    write_embeddings(engine, paths, space="shared", model_version="align@1", date=DAYS[0],
                     rows=[EmbeddingRow(c, "vision") for c in ids] + [EmbeddingRow(c, "audio") for c in ids],
                     vectors=np.concatenate([vision, audio]))
    assert {h.modality for h in search(engine, paths, space="shared", query=query, topk=5)} == {"vision"}
    hits = search(engine, paths, space="shared", query=query, topk=5, modality="audio")
    assert len(hits) == 5 and {h.modality for h in hits} == {"audio"}


def test_source_filter(mem):
    engine, paths = mem
    a = add_day(engine, paths, DAYS[0], 10, source_name="kitchen.mp4")
    b = add_day(engine, paths, DAYS[0], 10, source_name="garden.mp4", seed=1)
    write_embeddings(engine, paths, space="vision", model_version="m@1", date=DAYS[0],
                     rows=[EmbeddingRow(c, "vision") for c in a + b], vectors=day_vectors(20, 0))
    hits = search(engine, paths, space="vision", query=np.ones(DIM), topk=20, source="garden")
    assert len(hits) == 10 and {h.clip_id for h in hits} == set(b)


def test_excluded_clip_is_replaced_by_the_next_one(mem):
    engine, paths = mem
    days = fill(engine, paths, DAYS[:1])
    ids, vectors = days[DAYS[0]]
    hits = search(engine, paths, space="vision", query=vectors[3], topk=5, exclude_clip_ids=(ids[3],))
    assert len(hits) == 5 and ids[3] not in {h.clip_id for h in hits}


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_faiss_path_agrees_with_exact(mem, kind):
    engine, paths = mem
    fill(engine, paths, DAYS, n_clips=400)
    rng = np.random.default_rng(3)
    queries = day_vectors(30, 1) + 0.05 * rng.standard_normal((30, DIM)).astype(np.float32)
    faiss_opts = SearchOptions(index=kind, faiss_threshold=0, min_recall=0.95)
    agree = total = 0
    for q in queries:
        exact = [h.clip_id for h in search(engine, paths, space="vision", query=q, topk=10,
                                           options=SearchOptions(index="exact"))]
        found = [h.clip_id for h in search(engine, paths, space="vision", query=q, topk=10,
                                           options=faiss_opts)]
        agree += len(set(exact) & set(found))
        total += 10
    assert agree / total >= (1.0 if kind == "flat" else 0.9)
    # Filters through the FAISS path: only that day's rows, still 10 of them.
    hits = search(engine, paths, space="vision", query=queries[0], topk=10,
                  date_from=DAYS[1], date_to=DAYS[1], options=faiss_opts)
    assert len(hits) == 10 and {h.date for h in hits} == {DAYS[1]}


def test_memory_files_are_private(mem):
    engine, paths = mem
    fill(engine, paths, DAYS[:1])
    search(engine, paths, space="vision", query=np.ones(DIM),
           options=SearchOptions(index="auto", faiss_threshold=0))
    index = next((paths.memory / "index").rglob("*.json"))
    assert stat.S_IMODE(index.stat().st_mode) == 0o600
    for folder in index.parents[:3]:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert stat.S_IMODE(paths.database.stat().st_mode) == 0o600
    shard = next(paths.embeddings.rglob("*.npy"))
    assert stat.S_IMODE(shard.stat().st_mode) == 0o600
    folder = shard.parent
    while folder != paths.root:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
        folder = folder.parent


@pytest.mark.parametrize("vectors, rows, message", [
    (np.zeros((2, 4)), 2, "zero"),
    (np.ones((3, 4)), 2, "2 rows for 3"),
    (np.ones(4), 1, r"\(N, D\)"),
])
def test_bad_vectors_are_refused(mem, vectors, rows, message):
    engine, paths = mem
    ids = add_day(engine, paths, DAYS[0], 3)
    with pytest.raises(ValueError, match=message):
        write_embeddings(engine, paths, space="vision", model_version="m@1", date=DAYS[0],
                         rows=[EmbeddingRow(c, "vision") for c in ids[:rows]], vectors=vectors)
    assert not list(paths.embeddings.rglob("*.npy"))


def test_dimension_must_match_the_space(mem):
    engine, paths = mem
    ids = add_day(engine, paths, DAYS[0], 3)
    embed_day(engine, paths, DAYS[0], ids)
    with pytest.raises(ValueError, match="holds 32-d"):
        embed_day(engine, paths, DAYS[1], ids, dim=16)
    with pytest.raises(ValueError, match="dimensions"):
        search(engine, paths, space="vision", query=np.ones(16))


def test_exact_topk_equals_brute_force_with_masks_and_duplicates():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50_000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x16 = x.astype(np.float16)
    x16[100:400] = x16[7]  # a wall of identical moments
    mask = rng.random(len(x)) > 0.3
    blocks = [Block(0, x16[:20_000], mask[:20_000]), Block(20_000, x16[20_000:], mask[20_000:])]
    for q in (x[7], x[123], _unit(rng.standard_normal(16)).astype(np.float32)):
        brute = x16.astype(np.float32) @ q
        brute[~mask] = -np.inf
        scores, ids = exact_topk(blocks, q, 10, chunk_rows=8192)
        assert np.allclose(scores, np.sort(brute)[::-1][:10], atol=1e-6)
        assert mask[ids].all()
        batch_scores, _ = exact_topk_batch(blocks, q[None], 10)
        assert np.allclose(batch_scores[0], scores, atol=1e-6)


def test_auto_searches_exactly_where_ivf_would_scan_everything(mem):
    engine, paths = mem
    ids = add_day(engine, paths, DAYS[0], 2000)
    rng = np.random.default_rng(0)  # isotropic: no clusters for IVF to exploit
    write_embeddings(engine, paths, space="vision", model_version="m@1", date=DAYS[0],
                     rows=[EmbeddingRow(c, "vision") for c in ids],
                     vectors=rng.standard_normal((2000, 64)).astype(np.float32))
    auto = SearchOptions(index="auto", faiss_threshold=0)
    query = rng.standard_normal(64).astype(np.float32)
    exact = search(engine, paths, space="vision", query=query, options=SearchOptions(index="exact"))
    assert search(engine, paths, space="vision", query=query, options=auto) == exact
    metas = list((paths.memory / "index").rglob("*.json"))
    assert len(metas) == 1 and '"exact"' in metas[0].read_text()
    assert not list((paths.memory / "index").rglob("*.faiss"))



def test_load_vectors_returns_one_key_as_written(mem):
    from memory.store import load_vectors

    engine, paths = mem
    ids = add_day(engine, paths, DAYS[0], 3)
    vectors = np.array([[3, 0], [1, 1], [0, 2]], np.float32)
    rows = [EmbeddingRow(ids[0], "vision"), EmbeddingRow(ids[1], "audio"), EmbeddingRow(ids[2], "vision")]
    write_embeddings(engine, paths, space="shared", model_version="m@1", date=DAYS[0], rows=rows,
                     vectors=vectors)
    got_rows, got = load_vectors(engine, paths, space="shared", model_version="m@1", date=DAYS[0])
    assert got_rows == rows
    np.testing.assert_allclose(got, [[1, 0], [2 ** -0.5, 2 ** -0.5], [0, 1]], atol=1e-3)
    assert load_vectors(engine, paths, space="shared", model_version="m@2", date=DAYS[0])[0] == []


def test_query_by_clip_uses_the_newest_version_holding_that_clip(mem):
    from memory.search import clip_vector

    engine, paths = mem
    old_ids = add_day(engine, paths, DAYS[0], 3)
    new_ids = add_day(engine, paths, DAYS[1], 3)
    for date, ids, version in ((DAYS[0], old_ids, "jepa@2026-01-10"), (DAYS[1], new_ids, "jepa@2026-01-11")):
        write_embeddings(engine, paths, space="vision", model_version=version, date=date,
                         rows=[EmbeddingRow(c, "vision") for c in ids], vectors=np.eye(3, 4) + 0.1)
    # The older night's clip is only in the older version: found there, not refused.
    assert clip_vector(engine, paths, "vision", old_ids[0])[0] == "jepa@2026-01-10"
    assert clip_vector(engine, paths, "vision", new_ids[0])[0] == "jepa@2026-01-11"
    assert clip_vector(engine, paths, "vision", old_ids[0], "jepa@2026-01-11") is None
