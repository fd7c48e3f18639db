"""A flipped byte, a truncated and a deleted shard (issue #18): a search leaves the shard out
and says so rather than ranking wrong vectors, ``doctor`` names each, and ``--repair`` moves a
damaged file to ``memory/quarantine/`` so the memory is consistent again."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from memfill import day_vectors, fill
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.paths import Paths
from memory import integrity, shards
from memory.catalog import Shard
from memory.db import open_database
from memory.doctor import doctor
from memory.search import _INDEXES, _ROW_META, DAMAGED, SearchOptions
from memory.store import search

DAYS = ["2026-01-10", "2026-01-11", "2026-01-12"]
EXACT = SearchOptions(index="exact")


@pytest.fixture
def mem(root):
    paths = Paths.at(root)
    engine = open_database(paths.database)
    _new_process()
    yield engine, paths
    engine.dispose()
    _new_process()


def _new_process() -> None:
    """Forget what this process has opened and checked, as a new query process would."""
    shards._MAPS.clear()
    shards._CHECKED.clear()
    DAMAGED.clear()
    _INDEXES.clear()
    _ROW_META.clear()


def _shard_of(engine, date: str) -> Shard:
    with Session(engine) as session:
        return session.scalars(select(Shard).where(Shard.date == date)).one()


def _flip(paths: Paths, shard: Shard, row: int) -> None:
    """Flip the lowest bit of one value of ``row`` in the file: the vector barely changes, so
    only a checksum can tell (it still ranks where it did)."""
    file = paths.root / shard.path
    offset = np.load(file, mmap_mode="r").offset + row * shard.dim * 2
    data = bytearray(file.read_bytes())
    data[offset] ^= 0x01
    file.write_bytes(bytes(data))


def _dates(hits) -> set[str]:
    return {h.date for h in hits}


def test_a_flipped_byte_is_left_out_of_search_named_by_doctor_and_quarantined(mem, caplog):
    engine, paths = mem
    days = fill(engine, paths, DAYS)
    ids, vectors = days[DAYS[1]]
    assert search(engine, paths, space="vision", query=vectors[7], topk=1, options=EXACT)[0].clip_id == ids[7]
    damaged = _shard_of(engine, DAYS[1])
    _flip(paths, damaged, 7)
    _new_process()

    with caplog.at_level(logging.WARNING, logger="memory.search"):
        hits = search(engine, paths, space="vision", query=vectors[7], topk=10, options=EXACT)
    assert len(hits) == 10 and DAYS[1] not in _dates(hits)  # the rest of the memory still answers
    assert damaged.path in caplog.text and "does not match its checksum" in caplog.text

    problems = doctor(paths)["problems"]
    last = (paths.root / damaged.path).stat().st_size - 1
    assert problems == [(f"shard {damaged.path} ({DAYS[1]}): file damaged: block 1 of 1 (bytes 0-{last}) "
                         "does not match its checksum, database says (40, 32)")]
    report = doctor(paths, repair=True)
    assert report["ok"] and "memory/quarantine" in report["repaired"][0]
    assert not (paths.root / damaged.path).exists()
    assert (paths.root / "memory" / "quarantine" / damaged.path).exists()  # kept, not deleted
    assert doctor(paths, read_data=True)["problems"] == []
    _new_process()
    assert DAYS[1] not in _dates(search(engine, paths, space="vision", query=vectors[7], topk=50, options=EXACT))


def test_a_truncated_and_a_deleted_shard_are_named_and_left_out(mem, caplog):
    engine, paths = mem
    days = fill(engine, paths, DAYS)
    cut, gone = _shard_of(engine, DAYS[0]), _shard_of(engine, DAYS[2])
    data = (paths.root / cut.path).read_bytes()
    (paths.root / cut.path).write_bytes(data[:len(data) // 2])
    (paths.root / gone.path).unlink()
    _new_process()

    with caplog.at_level(logging.WARNING, logger="memory.search"):
        hits = search(engine, paths, space="vision", query=days[DAYS[0]][1][3], topk=10, options=EXACT)
    assert _dates(hits) == {DAYS[1]}
    assert cut.path in caplog.text and gone.path in caplog.text

    problems = doctor(paths)["problems"]
    assert len(problems) == 2
    assert problems[0].startswith(f"shard {cut.path} ({DAYS[0]}): file is not a readable .npy file")
    assert problems[1] == f"shard {gone.path} ({DAYS[2]}): file missing, database says (40, 32)"
    assert doctor(paths, repair=True)["ok"] and doctor(paths)["problems"] == []
    assert (paths.root / "memory" / "quarantine" / cut.path).read_bytes() == data[:len(data) // 2]


def test_an_approximate_search_refuses_the_damaged_rows_it_would_rerank(mem, caplog):
    """IVF-PQ re-ranks candidates from the shards: the blocks of the rows it reads are checked
    (the cached index itself was built before the damage and is reused, not rebuilt)."""
    engine, paths = mem
    fill(engine, paths, DAYS, n_clips=400)
    ivfpq = SearchOptions(index="auto", faiss_threshold=0, index_ram_gb=1e-6)
    query = day_vectors(400, 1)[5]  # a day-2 vector (fill seeds day i with i)
    before = search(engine, paths, space="vision", query=query, topk=10, options=ivfpq)
    assert DAYS[1] in _dates(before)
    (index_file,) = (paths.memory / "index").rglob("*.faiss")
    built_at = index_file.stat().st_mtime_ns
    damaged = _shard_of(engine, DAYS[1])
    for row in range(400):
        _flip(paths, damaged, row)
    _new_process()

    with caplog.at_level(logging.WARNING, logger="memory.search"):
        hits = search(engine, paths, space="vision", query=query, topk=10, options=ivfpq)
    assert len(hits) == 10 and DAYS[1] not in _dates(hits)
    assert damaged.path in caplog.text
    assert index_file.stat().st_mtime_ns == built_at


def test_each_shard_is_read_once_unless_asked_and_old_shards_get_their_sums(mem, monkeypatch):
    engine, paths = mem
    fill(engine, paths, DAYS)
    read = []
    real = integrity.damage
    monkeypatch.setattr(integrity, "damage", lambda path, sums, blocks=None: read.append(path) or real(path, sums, blocks))
    assert doctor(paths)["problems"] == [] and len(read) == 3
    read.clear()
    assert doctor(paths)["problems"] == [] and read == []  # each night's shards are read once
    # A flip after that is found by a full read (and by any search that reads the shard).
    _flip(paths, _shard_of(engine, DAYS[0]), 0)
    assert doctor(paths)["problems"] == []
    assert "does not match its checksum" in doctor(paths, read_data=True)["problems"][0]
    assert len(read) == 3

    # A shard written before checksums were kept: noted, and recorded by --repair.
    with Session(engine) as session, session.begin():
        session.execute(update(Shard).where(Shard.date == DAYS[2]).values(block_sums=None))
    report = doctor(paths)
    assert report["problems"][1:] == [] and "1 shard(s) were written before checksums" in report["notes"][0]
    doctor(paths, repair=True)
    assert _shard_of(engine, DAYS[2]).block_sums == integrity.file_sums(paths.root / _shard_of(engine, DAYS[2]).path)


def test_block_sums_match_a_file_summed_on_disk(tmp_path):
    data = np.random.default_rng(0).bytes(3 * integrity.BLOCK + 12345)
    with open(tmp_path / "f", "wb") as fh:
        writer = integrity.SummingWriter(fh)
        for start in range(0, len(data), 700_001):  # writes that straddle block edges
            writer.write(data[start:start + 700_001])
    assert writer.sums() == integrity.file_sums(tmp_path / "f") and integrity.blocks_of(writer.sums()) == 4
    assert integrity.damage(tmp_path / "f", writer.sums()) is None
    assert "3 blocks" in integrity.damage(tmp_path / "f", writer.sums()[:3 * integrity.DIGEST])


def test_an_older_memory_gets_the_checksum_columns(root):
    paths = Paths.at(root)
    engine = open_database(paths.database)
    with engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE shards DROP COLUMN block_sums")
        connection.exec_driver_sql("ALTER TABLE shards DROP COLUMN verified_at")
    engine.dispose()
    engine = open_database(paths.database)
    with engine.connect() as connection:
        columns = {row[1] for row in connection.exec_driver_sql("PRAGMA table_info(shards)")}
    engine.dispose()
    assert {"block_sums", "verified_at"} <= columns


def test_a_repair_whose_commit_fails_moves_no_file(mem, monkeypatch):
    # The ordering rule for repairs: rows first, committed, then files. A commit that fails
    # (a full disk) must leave the damaged shard where its row says, for the next repair.
    engine, paths = mem
    fill(engine, paths, DAYS)
    damaged = _shard_of(engine, DAYS[1])
    _flip(paths, damaged, 3)

    def full(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Session, "commit", full)
    with pytest.raises(OSError):
        doctor(paths, repair=True, read_data=True)
    monkeypatch.undo()
    assert (paths.root / damaged.path).exists() and not (paths.root / "memory" / "quarantine").exists()
    assert _shard_of(engine, DAYS[1]).path == damaged.path
    report = doctor(paths, repair=True, read_data=True)
    assert report["ok"] and (paths.root / "memory" / "quarantine" / damaged.path).exists()
    assert doctor(paths, read_data=True)["problems"] == []
