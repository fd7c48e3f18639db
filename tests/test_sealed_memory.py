"""The memory's own files with ``memory.encryption: on`` (issue #18): shards, maps, keepsakes and
the cached search indexes are sealed; a search answers as over the same plain memory; a sealed
shard that is flipped, cut or deleted is left out of search with a warning and named by
``doctor`` (which reads the database through SQLCipher, in worker processes too); and a
plaintext file in a sealed memory is a problem the doctor names."""
from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pytest
from memfill import day_vectors, fill
from sqlalchemy import select
from sqlalchemy.orm import Session

from core import vault
from core.keys import ScryptCost, init_key, unlock
from core.paths import Paths
from core.sealed import is_sealed
from memory import scan, shards
from memory.catalog import Shard
from memory.db import SQLITE_MAGIC, open_database
from memory.doctor import doctor
from memory.keepsakes import write_keep_file
from memory.maps import load_map, save_map
from memory.search import _INDEXES, _ROW_META, DAMAGED, SearchOptions, search
from memory.store import load_vectors

DAYS = ["2026-01-10", "2026-01-11", "2026-01-12", "2026-01-13"]
VERSION = "jepa@2026-01-01"
EXACT = SearchOptions(index="exact")
IVF = SearchOptions(index="ivf", faiss_threshold=0)
IVFPQ = SearchOptions(index="auto", faiss_threshold=0, index_ram_gb=1e-6)
PASSPHRASE = "pw"


def _new_process() -> None:
    """Forget what this process has opened, checked and built, as a new query process would."""
    shards._MAPS.clear()
    shards._CHECKED.clear()
    shards._HELD.clear()
    DAMAGED.clear()
    _INDEXES.clear()
    _ROW_META.clear()


def _seal(root) -> Paths:
    """Give the memory at ``root`` a key and unlock it in this process, as a night does."""
    init_key(root / "memory" / "key.json", PASSPHRASE, cost=ScryptCost(n=2**10))
    paths = Paths.at(root)
    vault.register(paths.root, unlock(paths.memory / "key.json", PASSPHRASE))
    return paths


@pytest.fixture
def sealed(tmp_path):
    paths = _seal(tmp_path / "sealed")
    engine = open_database(paths.database)
    _new_process()
    yield engine, paths
    engine.dispose()
    _new_process()
    vault.forget_all()


@pytest.fixture
def plain(tmp_path):
    (tmp_path / "plain").mkdir()
    paths = Paths.at(tmp_path / "plain")
    engine = open_database(paths.database)
    yield engine, paths
    engine.dispose()


def _seal_media(paths: Paths) -> None:
    """memfill writes the day's frames and sounds plain; a night seals them."""
    for folder in ("clips", "frames", "audio"):
        for file in sorted((paths.root / "data" / folder).rglob("*")):
            if file.is_file():
                paths.vault.write_bytes(file, file.read_bytes())


def _shard_of(engine, date: str) -> Shard:
    with Session(engine) as session:
        return session.scalars(select(Shard).where(Shard.date == date)).one()


def _found(hits) -> list[tuple[int, float]]:
    return [(h.clip_id, round(h.score, 5)) for h in hits]


def _store(engine, paths: Paths) -> None:
    fill(engine, paths, DAYS[:3], n_clips=400)
    save_map(engine, paths, space="vision", from_version="jepa@2026-01-02", to_version=VERSION, kind="linear",
             arrays={"weight": np.eye(4) * 2}, heldout={"r2": 0.5})
    write_keep_file(paths, DAYS[0], "1.jpg", b"\xff\xd8 a keyframe")


def test_a_sealed_memory_seals_its_files_and_answers_as_a_plain_one(sealed, plain):
    sealed_engine, sealed_paths = sealed
    plain_engine, plain_paths = plain
    _store(sealed_engine, sealed_paths)
    _store(plain_engine, plain_paths)
    query = day_vectors(400, 1)[5]  # a day-2 vector (fill seeds day i with i)

    for options in (EXACT, IVF, IVFPQ):
        _new_process()
        found = _found(search(sealed_engine, sealed_paths, space="vision", query=query, topk=10, options=options))
        assert found == _found(search(plain_engine, plain_paths, space="vision", query=query, topk=10,
                                      options=options)), options
        assert len(found) == 10
    # The IVF-PQ index cached on disk (sealed) is read back by a new process, not built again.
    (index_file,) = (sealed_paths.memory / "index").rglob("ivfpq-*.faiss")
    built_at = index_file.stat().st_mtime_ns
    _new_process()
    assert _found(search(sealed_engine, sealed_paths, space="vision", query=query, topk=10, options=IVFPQ)) == found
    assert index_file.stat().st_mtime_ns == built_at

    for folder in ("embeddings", "index", "maps", "keep"):
        files = [f for f in (sealed_paths.memory / folder).rglob("*") if f.is_file()]
        assert files and all(is_sealed(f) for f in files), folder
    assert sealed_paths.database.read_bytes()[:len(SQLITE_MAGIC)] != SQLITE_MAGIC
    assert not any(is_sealed(f) for f in plain_paths.memory.rglob("*") if f.is_file())

    stored = load_map(sealed_engine, sealed_paths, "vision", "jepa@2026-01-02", VERSION)
    np.testing.assert_array_equal(stored.arrays["weight"], np.eye(4) * 2)
    assert sealed_paths.vault.read_bytes(sealed_paths.keep(DAYS[0]) / "1.jpg") == b"\xff\xd8 a keyframe"
    rows, vectors = load_vectors(sealed_engine, sealed_paths, space="vision", model_version=VERSION, date=DAYS[1])
    plain_rows, plain_vectors = load_vectors(plain_engine, plain_paths, space="vision", model_version=VERSION,
                                             date=DAYS[1])
    assert rows == plain_rows and np.array_equal(vectors, plain_vectors)


def test_sealed_rows_read_as_an_array_would_and_refuse_a_damaged_chunk(sealed):
    """A 3-chunk sealed shard: any indexing reads what the array holds; a chunk flipped in the
    middle is refused where it is read (a header check does not read it; the doctor's full
    read does)."""
    _, paths = sealed
    unit = shards.normalise(np.random.default_rng(0).standard_normal((40_000, 32)))
    written = shards.write_shard(paths, space="vision", model_version=VERSION, date=DAYS[0], unit=unit)
    shard = Shard(path=str(written.path.relative_to(paths.root)), rows=40_000, dim=32, block_sums=written.block_sums)
    lazy = shards.open_shard(paths, shard, check=False)
    assert isinstance(lazy, shards.SealedRows) and is_sealed(written.path)
    whole = shards.open_shard(paths, shard)
    assert isinstance(whole, np.ndarray) and not whole.flags.writeable
    np.testing.assert_array_equal(whole, unit.astype(np.float16))
    mask = np.zeros(40_000, bool)
    mask[[3, 39_999]] = True
    for key in (7, -1, slice(2, 9), slice(None, None, 997), [20_000, 5, 20_000], np.array([39_999, 0]), mask,
                (slice(100, 104), slice(0, 4)), (np.array([1, 30_000]), [2, 3])):
        np.testing.assert_array_equal(lazy[key], whole[key], err_msg=repr(key))
    np.testing.assert_array_equal(np.asarray(lazy, dtype=np.float32), whole.astype(np.float32))
    assert shards.shard_problem(paths, shard, read_data=True) is None

    data = bytearray(written.path.read_bytes())
    data[len(data) // 2] ^= 0x01  # in the second of three chunks
    written.path.write_bytes(bytes(data))
    _new_process()
    assert shards.shard_problem(paths, shard) is None  # the header's chunk and the last one
    assert "chunk 2 of 3 does not authenticate" in shards.shard_problem(paths, shard, read_data=True)
    assert shards.read_rows(paths, shard, [0, 39_999]).shape == (2, 32)
    with pytest.raises(shards.ShardError, match="damaged: does not decrypt"):
        shards.read_rows(paths, shard, [20_000])
    with pytest.raises(shards.ShardError, match="damaged: does not decrypt"):
        shards.open_shard(paths, shard)


def test_a_plain_shard_of_a_memory_sealed_later_is_still_mapped(tmp_path):
    (tmp_path / "root").mkdir()
    paths = Paths.at(tmp_path / "root")
    unit = shards.normalise(np.random.default_rng(1).standard_normal((50, 8)))
    written = shards.write_shard(paths, space="vision", model_version=VERSION, date=DAYS[0], unit=unit)
    _seal(paths.root)
    try:
        _new_process()
        shard = Shard(path=str(written.path.relative_to(paths.root)), rows=50, dim=8, block_sums=written.block_sums)
        assert isinstance(shards.open_shard(paths, shard), np.memmap)
        assert shards.shard_problem(paths, shard, read_data=True) is None
        newer = shards.write_shard(paths, space="vision", model_version=VERSION, date=DAYS[1], unit=unit)
        assert is_sealed(newer.path) and not is_sealed(written.path)
    finally:
        _new_process()
        vault.forget_all()


def test_damaged_sealed_shards_are_left_out_of_search_and_named_by_doctor(sealed, caplog):
    engine, paths = sealed
    days = fill(engine, paths, DAYS)
    _seal_media(paths)
    flipped, cut, gone = (_shard_of(engine, day) for day in DAYS[:3])
    data = bytearray((paths.root / flipped.path).read_bytes())
    data[len(data) // 2] ^= 0x01
    (paths.root / flipped.path).write_bytes(bytes(data))
    whole = (paths.root / cut.path).read_bytes()
    (paths.root / cut.path).write_bytes(whole[:len(whole) - 100])
    (paths.root / gone.path).unlink()
    _new_process()

    with caplog.at_level(logging.WARNING, logger="memory.search"):
        hits = search(engine, paths, space="vision", query=days[DAYS[0]][1][3], topk=10, options=EXACT)
    assert len(hits) == 10 and {h.date for h in hits} == {DAYS[3]}
    for shard in (flipped, cut, gone):
        assert shard.path in caplog.text
    assert "does not decrypt" in caplog.text

    report = doctor(paths, workers=1)
    assert report["problems"] == doctor(paths, workers=2)["problems"]  # the same from worker processes
    problems = report["problems"]
    assert len(problems) == 3
    assert problems[0].startswith(f"shard {flipped.path} ({DAYS[0]}): file damaged: does not decrypt (")
    assert "does not authenticate" in problems[0]
    assert problems[1].startswith(f"shard {cut.path} ({DAYS[1]}): file damaged: does not decrypt (")
    assert "cut short" in problems[1]
    assert problems[2] == f"shard {gone.path} ({DAYS[2]}): file missing, database says (40, 32)"

    assert doctor(paths, repair=True)["ok"]
    assert (paths.root / "memory" / "quarantine" / flipped.path).exists()  # kept, not deleted
    assert doctor(paths, read_data=True, workers=2)["problems"] == []
    _new_process()
    hits = search(engine, paths, space="vision", query=days[DAYS[0]][1][3], topk=50, options=EXACT)
    assert {h.date for h in hits} == {DAYS[3]}


def test_an_approximate_search_leaves_out_a_sealed_shard_damaged_after_its_index(sealed, caplog):
    engine, paths = sealed
    fill(engine, paths, DAYS[:3], n_clips=400)
    query = day_vectors(400, 1)[5]
    before = _found(search(engine, paths, space="vision", query=query, topk=10, options=IVFPQ))
    assert DAYS[1] in {h.date for h in search(engine, paths, space="vision", query=query, topk=10, options=IVFPQ)}
    # A cached index that does not decrypt is a cache: built again, with a warning.
    (index_file,) = (paths.memory / "index").rglob("*.faiss")
    data = bytearray(index_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    index_file.write_bytes(bytes(data))
    _new_process()
    with caplog.at_level(logging.WARNING, logger="memory.search"):
        assert _found(search(engine, paths, space="vision", query=query, topk=10, options=IVFPQ)) == before
    assert "does not decrypt" in caplog.text and is_sealed(index_file)
    caplog.clear()
    damaged = _shard_of(engine, DAYS[1])
    data = bytearray((paths.root / damaged.path).read_bytes())
    data[len(data) // 2] ^= 0x01
    (paths.root / damaged.path).write_bytes(bytes(data))
    _new_process()

    with caplog.at_level(logging.WARNING, logger="memory.search"):
        hits = search(engine, paths, space="vision", query=query, topk=10, options=IVFPQ)
    assert len(hits) == 10 and DAYS[1] not in {h.date for h in hits}
    assert damaged.path in caplog.text


def test_doctor_is_clean_on_a_clean_sealed_memory_with_and_without_workers(sealed, monkeypatch):
    engine, paths = sealed
    fill(engine, paths, DAYS[:2])
    _seal_media(paths)
    assert doctor(paths)["problems"] == []
    assert doctor(paths, read_data=True)["problems"] == []
    report = doctor(paths, read_data=True, workers=2)  # forked workers
    assert report["problems"] == [] and report["workers"] == 2
    # Spawned workers (as under the web server) start with no key: the pool hands it to them.
    monkeypatch.setattr(scan, "get_all_start_methods", lambda: ["spawn"])
    assert doctor(paths, read_data=True, workers=2)["problems"] == []


def test_doctor_names_plaintext_files_in_a_sealed_memory(sealed):
    engine, paths = sealed
    fill(engine, paths, DAYS[:1])  # its frames and sounds are left plain
    summary = paths.report(dt.date.fromisoformat(DAYS[0])) / "summary.json"
    summary.parent.mkdir(parents=True)
    summary.write_text('{"plain": true}')
    latest = paths.checkpoints / "jepa" / "latest"  # plain by design: a date
    latest.parent.mkdir(parents=True)
    latest.write_text(DAYS[0] + "\n")

    rel = str(summary.relative_to(paths.root))
    assert doctor(paths)["problems"] == [f"reports/: 1 file(s) not sealed in a sealed memory (first: {rel})"]
    problems = doctor(paths, read_data=True, workers=2)["problems"]
    assert [p.split(":")[0] for p in problems] == ["reports/", "data/frames/", "data/audio/"]
    assert problems[1].startswith("data/frames/: 120 file(s) not sealed")
    assert not doctor(paths, repair=True)["ok"]  # nothing the doctor can do about it


def test_a_sealed_index_read_back_whole_and_refused_where_a_chunk_fails(sealed):
    """The cached index is decrypted as FAISS reads it: a chunk that fails midway (not the
    last one, which opening checks) is a SealedFileError, not FAISS's own error."""
    import faiss

    from core.sealed import SealedFileError
    from memory.search import _read_index

    _, paths = sealed
    index = faiss.IndexFlatIP(32)
    index.add(np.random.default_rng(0).standard_normal((10_000, 32)).astype(np.float32))  # 1.3 MB: 2 chunks
    file = paths.memory / "index" / "vision" / VERSION / "flat-test.faiss"
    with paths.vault.writer(file) as fh:
        faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write))
    assert is_sealed(file) and _read_index(paths.vault, file).ntotal == 10_000
    data = bytearray(file.read_bytes())
    data[1000] ^= 0x01  # in the first chunk
    file.write_bytes(bytes(data))
    with pytest.raises(SealedFileError, match="chunk 1 of 2"):
        _read_index(paths.vault, file)
