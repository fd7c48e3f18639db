"""``doctor`` on a synthetic year-shaped memory (bench/doctor.py's builder): clean when it is,
and the folder-at-a-time file checks still find each missing and unknown file."""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from core.paths import Paths
from memory.doctor import doctor

BENCH = Path(__file__).resolve().parent.parent / "bench" / "doctor.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_doctor", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def store(tmp_path) -> tuple[Paths, dict]:
    """600 clips over 6 days, the newest 2 with frames, segments, clip files and recordings."""
    built = _bench().build_store(tmp_path / "root", 600, days=6, file_days=2, sources_per_day=2,
                                 real_vectors=True)
    return Paths.at(tmp_path / "root"), built


def test_a_built_store_is_clean(store):
    paths, built = store
    assert built["counts"]["frames"] == 3 * 200 and built["counts"]["keepsakes"] == 600
    report = doctor(paths)
    assert report["problems"] == [] and report["ok"]
    assert doctor(paths, read_data=True)["problems"] == []  # the builder's block sums are right


def test_a_sparse_store_has_the_sums_of_its_files(tmp_path):
    """The bench's sparse shards (a header, then a hole) get their sums without reading the
    hole: the doctor reading them whole agrees."""
    _bench().build_store(tmp_path / "root", 30_000, days=2, file_days=1, sources_per_day=1)
    report = doctor(Paths.at(tmp_path / "root"), read_data=True)
    assert report["problems"] == [] and report["notes"] == []


@pytest.mark.parametrize("workers", [1, 2])
def test_deleted_and_unknown_files_are_found_in_order(store, workers):
    """The same report whether the scans run here or in worker processes (forced on this small store)."""
    paths, built = store
    old_day, media_day = built["dates"][0], built["file_dates"][-1]
    keyframe = sorted(paths.keep(old_day).glob("*.jpg"))[3]
    frame = sorted((paths.root / "data" / "frames" / media_day).rglob("*.jpg"))[7]
    keyframe.unlink()
    frame.unlink()
    stray = paths.keep(old_day) / "999999.jpg"
    stray.write_bytes(b"jpeg")
    stray_shard = next(paths.embeddings.rglob("*.npy")).with_name(f"{old_day}-feedfeedfeed.npy")
    stray_shard.write_bytes(b"x")
    shard, kept, frame, keyframe = (p.relative_to(paths.root) for p in (stray_shard, stray, frame, keyframe))
    # A day's folder may hold a folder, and memory/keep a file of no day: both are unknown.
    (paths.keep(old_day) / "odd").mkdir()
    (paths.keep(old_day) / "odd" / "x.jpg").write_bytes(b"x")
    (paths.memory / "keep" / "loose.jpg").write_bytes(b"x")
    # A keepsake day whose folder is gone: its files are missing.
    gone_day = built["dates"][1]
    gone_files = sorted(p.relative_to(paths.root).as_posix() for p in paths.keep(gone_day).iterdir())
    shutil.rmtree(paths.keep(gone_day))
    report = doctor(paths, workers=workers)
    assert report["workers"] == workers
    problems = report["problems"]
    gone = [line for line in problems if line.startswith(f"keepsake memory/keep/{gone_day}/")]
    assert sorted(line.split()[1].rstrip(":") for line in gone) == gone_files
    assert [line for line in problems if line not in gone] == [
        f"{shard}: shard file no database row knows",
        f"{kept}: kept file no database row knows",
        f"memory/keep/{old_day}/odd/x.jpg: kept file no database row knows",
        "memory/keep/loose.jpg: kept file no database row knows",
        f"frame {frame}: file missing",
        f"keepsake {keyframe}: file missing",
    ]
    assert doctor(paths, repair=True, workers=workers)["ok"]
    assert not stray.exists() and not stray_shard.exists() and doctor(paths)["problems"] == []


def test_a_broken_link_is_missing_and_a_link_to_a_file_is_not(store):
    paths, built = store
    frames = sorted((paths.root / "data" / "frames" / built["file_dates"][-1]).rglob("*.jpg"))
    frames[0].unlink()
    os.symlink(paths.root / "nowhere.jpg", frames[0])
    frames[1].unlink()
    os.symlink(frames[2], frames[1])
    assert doctor(paths)["problems"] == [f"frame {frames[0].relative_to(paths.root)}: file missing"]
