"""``sleep.py doctor`` on a year-sized memory: its wall time, its peak memory, the database's size.

    python bench/doctor.py --clips 20000       # a small year, to check the store is clean (seconds)
    python bench/doctor.py --clips 200000      # a bigger one, to extrapolate from (half a minute)
    python bench/doctor.py --root DIR          # a year: 7,008,000 clips, about 8 min and 5 GB on 2 cores

A year of footage at 16 hours a day is 19,200 clips a day, 7 million clips, 21 million frames.
The store is written directly (sqlite3 ``executemany``, one transaction per day, indexes
built after), shaped as the nightly writers leave it after a year of nights with
``memory.retention.derived_days`` and ``raw_days`` set to ``--file-days``:

- every day: its sources (recordings), clips, episodes, highlights, stage ledger rows and
  keepsake rows (``memory/keep/{date}/{clip}.jpg|.flac``: kept forever);
- one complete model version per space the default config writes (``vision_frame`` and
  ``vision`` 256-d, ``audio`` 256-d, ``shared`` 256-d with a vision and an audio row per
  clip, ``sae`` 1024-d with the rows of its input space), one shard per day, float16. As
  after ``reembed``: earlier days hold one ``vision_frame`` row per clip (its keyframe), the
  newest night one per frame;
- the newest ``--file-days`` days only: frames (3 per clip), audio segments, clip files and
  the recordings, with their files; retention removed the older days' rows and files
  (frame and segment rows deleted, ``clips.video_path`` cleared, sources ``removed``), as
  :func:`memory.retention.apply_retention` does.

Files are empty (the doctor asks only whether they exist), and each but the first of a
folder is a hard link to that one: a year's 14 million kept files, or 49 million files with
every day's media (``--file-days 365``), cost no inode each. Shards are sparse ``.npy``
files of their full size (header real, vectors zeros: the doctor reads only the header)
unless ``--real-vectors``.

Prints the database's size (and per year, also with every day's frames and segments kept,
the default ``derived_days: null``), shard bytes per space, the build time, and ``doctor``'s
wall and CPU time, per-check times and peak RSS, run in a fresh process, beside the issue's
target of a minute; a smaller store's figures are scaled to a year by clips, and the media
checks of the file days to every day.
"""
from __future__ import annotations

import argparse
import datetime as dt
import errno
import hashlib
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.paths import Paths
from memory import integrity
from memory.db import open_database
from memory.shards import DTYPE, private_folder, shard_folder

YEAR_CLIPS = 7_008_000  # 365 days x 16 h x 1,200 clips of 3 s an hour
TARGET_S = 60  # issue #19: doctor on a year-sized store under a minute
DAYS = 365
START = dt.date(2025, 1, 1)
FRAMES_PER_CLIP = 3  # ingest.frame_fps 1.0 x ingest.clip_seconds 3.0
CLIP_SECONDS = 3.0
SAMPLE_RATE = 16000
# (space, model, dim, rows per clip): what configs/default.yaml's stages write each night.
# sae reads ``shared`` (models.sae.input_space), so it has a vision and an audio row per clip.
SPACES = (("vision_frame", "jepa", 256), ("vision", "jepa", 256), ("audio", "cpc", 256),
          ("shared", "align", 256), ("sae", "sae", 1024))
PER_CLIP_TABLES = ("clips", "frames", "audio_segments", "keepsakes", "episodes", "episode_clips", "shard_rows")
NIGHT_STAGES = ("ingest", "episodes", "vision", "audio", "align", "sae", "reconstruct", "keep",
                "reembed", "dream", "report", "retention")


def _stamp(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")  # how SQLAlchemy stores a DateTime in SQLite


class _Files:
    """Empty files, made by name in their folder (no ``pathlib`` per file: millions of them);
    each but a folder's first is a hard link to it: no inode of its own, and a link is
    made in a tenth of the time a file is."""

    def __init__(self, root: Path):
        self.root = str(root)
        self.made = self.links = 0
        self._folders: dict[str, tuple[int, str]] = {}  # folder -> (open fd, its first file)

    def add(self, folder: str, name: str) -> str:
        """Make ``folder/name`` (relative to the root); return that path."""
        found = self._folders.get(folder)
        if found is None:
            os.makedirs(f"{self.root}/{folder}", mode=0o700, exist_ok=True)
            fd = os.open(f"{self.root}/{folder}", os.O_RDONLY | os.O_DIRECTORY)
            os.close(os.open(name, os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
            self._folders[folder] = (fd, name)
        else:
            try:
                os.link(found[1], name, src_dir_fd=found[0], dst_dir_fd=found[0])
                self.links += 1
            except OSError as exc:
                if exc.errno != errno.EMLINK:  # ext4 allows 65,000 links to a file
                    raise
                os.close(os.open(name, os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=found[0]))
                self._folders[folder] = (found[0], name)
        self.made += 1
        return f"{folder}/{name}"

    def close(self) -> None:
        """Close the folders' descriptors (a day's worth at a time)."""
        for fd, _ in self._folders.values():
            os.close(fd)
        self._folders.clear()


_ZERO_SUMS: dict[int, bytes] = {}


def _zero_sum(length: int) -> bytes:
    if length not in _ZERO_SUMS:
        _ZERO_SUMS[length] = integrity.digest(bytes(length))
    return _ZERO_SUMS[length]


def _sparse_sums(path: Path) -> bytes:
    """The block sums of a sparse shard (a header, then zeros) without reading its zeros."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(min(size, integrity.BLOCK))
    blocks = -(-size // integrity.BLOCK)
    sums = integrity.digest(head)
    if blocks > 1:
        tail = size - (blocks - 1) * integrity.BLOCK
        sums += _zero_sum(integrity.BLOCK) * (blocks - 2) + _zero_sum(tail)
    return sums


def _write_shard(paths: Paths, space: str, version: str, date: str, rows: int, dim: int,
                 real: bool, rng: np.random.Generator) -> tuple[str, bytes]:
    """A shard file as :func:`memory.shards.write_shard` names it, and its block sums; sparse
    unless ``real``."""
    folder = private_folder(paths, shard_folder(paths, space, version))
    path = folder / f"{date}-{uuid.uuid4().hex[:12]}.npy"
    if real:
        v = rng.standard_normal((rows, dim)).astype(np.float32)
        np.save(path, (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(DTYPE), allow_pickle=False)
    else:
        with open(path, "wb") as fh:
            np.lib.format.write_array_header_1_0(
                fh, {"descr": DTYPE.str, "fortran_order": False, "shape": (rows, dim)})
            fh.truncate(fh.tell() + rows * dim * DTYPE.itemsize)
    os.chmod(path, 0o600)
    sums = integrity.file_sums(path) if real else _sparse_sums(path)
    return str(path.relative_to(paths.root)), sums


def _clips_per_day(clips: int, days: int) -> list[int]:
    return [clips // days + (1 if d < clips % days else 0) for d in range(days)]


def build_store(root: Path, clips: int, *, days: int = DAYS, file_days: int = 3, sources_per_day: int = 16,
                real_vectors: bool = False, seed: int = 0,
                log: Callable[[str], None] = lambda _: None) -> dict:
    """Write a memory of ``clips`` clips over ``days`` days under ``root`` (see the module doc).

    Args:
        root: an empty folder (the root of the memory).
        clips: clips in all, spread evenly over the days.
        days: nights, ending with the newest (``START`` + days - 1).
        file_days: the newest days that still hold frames, audio segments, clip files and
            recordings (rows and files); 0 = every day's removed.
        sources_per_day: recordings a day (its clips split evenly between them).
        real_vectors: write random unit vectors instead of sparse files.
        seed: the vectors' and hashes' seed.
        log: called with a line of progress now and then.
    Returns:
        ``{"dates", "file_dates", "counts": {table: rows}, "files": n, "links": n,
        "seconds": build time}``.
    """
    started = time.perf_counter()
    paths = Paths.at(root)
    open_database(paths.database).dispose()  # the real schema, as a night creates it
    rng = np.random.default_rng(seed)
    dates = [(START + dt.timedelta(days=d)).isoformat() for d in range(days)]
    file_dates = set(dates[len(dates) - file_days:]) if file_days else set()
    last = dates[-1]
    files = _Files(paths.root)
    counts: dict[str, int] = {}

    db = sqlite3.connect(paths.database, isolation_level=None)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-1000000")
    # Secondary indexes are built once at the end (sorted, as a year of appends leaves them).
    indexes = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL").fetchall()
    for name, _ in indexes:
        db.execute(f"DROP INDEX {name}")

    def insert(table: str, columns: str, rows: list[tuple]) -> None:
        if rows:
            marks = ",".join("?" * len(rows[0]))
            db.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)
            counts[table] = counts.get(table, 0) + len(rows)

    now = _stamp(dt.datetime(2026, 1, 1, 4, 30))
    space_ids = {space: i for i, (space, _, _) in enumerate(SPACES, 1)}
    db.execute("BEGIN")
    insert("embedding_spaces", "id, name, model_version, dim, created_at",
           [(space_ids[s], s, f"{m}@{last}", d, now) for s, m, d in SPACES])
    insert("active_versions", "space, space_id, switched_at", [(s, i, now) for s, i in space_ids.items()])
    db.execute("COMMIT")

    ids = {"source": 0, "clip": 0, "frame": 0, "audio": 0, "shard": 0, "episode": 0, "highlight": 0}
    per_day = _clips_per_day(clips, days)
    for d, (date, n_clips) in enumerate(zip(dates, per_day)):
        if n_clips == 0:
            continue
        day = dt.date.fromisoformat(date)
        media = date in file_dates
        keep = f"memory/keep/{date}"
        db.execute("BEGIN")
        sources, clip_rows, frame_rows, audio_rows, keep_rows = [], [], [], [], []
        clip_ids, frame_ids = [], []
        per_source = _clips_per_day(n_clips, sources_per_day)
        for s, count in enumerate(per_source):
            if count == 0:
                continue
            ids["source"] += 1
            source_id = ids["source"]
            start = dt.datetime.combine(day, dt.time(6)) + dt.timedelta(hours=s)
            name = f"VID_{start:%Y%m%d_%H%M%S}.mp4"
            raw = f"data/raw/{date}/{name}"
            content_hash = hashlib.sha256(f"{seed}-{date}-{s}".encode()).hexdigest()
            key = content_hash[:16]  # ingest.extract.source_key
            frames, segments, copies = (f"data/frames/{date}/{key}", f"data/audio/{date}/segments/{key}",
                                        f"data/clips/{date}/{key}")
            info = {"duration_s": count * CLIP_SECONDS, "has_video": True, "has_audio": True, "width": 1280,
                    "height": 720, "fps": 30.0, "video_codec": "h264", "audio_codec": "aac",
                    "creation_time": None, "video_index": 0, "audio_index": 1}
            probe = {"info": info, "settings": "3.0/1.0/256/3/16000/True", "note": None, "seconds": 41.5}
            sources.append((
                source_id, date, raw, content_hash, 1_800_000_000, "ok" if media else "removed",
                None if media else f"retention: recordings kept {file_days} days", count * CLIP_SECONDS,
                1, 1, 1280, 720, _stamp(start), "filename", json.dumps(probe), now))
            if media:
                files.add(f"data/raw/{date}", name)
            for index in range(count):
                ids["clip"] += 1
                clip_id = ids["clip"]
                clip_ids.append(clip_id)
                wall = _stamp(start + dt.timedelta(seconds=CLIP_SECONDS * index))
                video = files.add(copies, f"{index:05d}.mp4") if media else None
                clip_rows.append((clip_id, source_id, date, index, CLIP_SECONDS * index,
                                  CLIP_SECONDS * (index + 1), wall, video))
                if media:
                    for j in range(FRAMES_PER_CLIP):
                        ids["frame"] += 1
                        frame = files.add(frames, f"{index:05d}_{j}.jpg")
                        frame_rows.append((ids["frame"], clip_id, CLIP_SECONDS * index + j, frame))
                        frame_ids.append((clip_id, ids["frame"]))
                    ids["audio"] += 1
                    segment = files.add(segments, f"{index:05d}.wav")
                    audio_rows.append((ids["audio"], clip_id, segment, CLIP_SECONDS, SAMPLE_RATE))
                keep_rows.append((clip_id, date, files.add(keep, f"{clip_id}.jpg"),
                                  files.add(keep, f"{clip_id}.flac")))
        insert("sources", "id, date, path, content_hash, size_bytes, status, reason, duration_s, has_video, "
               "has_audio, width, height, wall_start, wall_start_from, probe, ingested_at", sources)
        insert("clips", 'id, source_id, date, "index", start_s, end_s, wall_start, video_path', clip_rows)
        insert("frames", "id, clip_id, t_s, path", frame_rows)
        insert("audio_segments", "id, clip_id, path, seconds, sample_rate", audio_rows)
        insert("keepsakes", "clip_id, date, keyframe, snippet", keep_rows)
        _insert_episodes(insert, ids, date, clip_rows, sources, rng)
        _insert_vectors(insert, paths, ids, space_ids, date, last, clip_ids, frame_ids, real_vectors, rng, now)
        insert("stage_runs", "date, stage, status, config_hash, started_at, finished_at, seconds, error, "
               "attempts, result", [(date, stage, "done", "0123456789abcdef0123456789abcdef", now, now, 60.0,
                                     None, 1, json.dumps({"metrics": {"seconds": 60.0}})) for stage in NIGHT_STAGES])
        db.execute("COMMIT")
        files.close()
        if d % 30 == 29 or d == days - 1:
            log(f"  {d + 1}/{days} days, {ids['clip']:,} clips, {time.perf_counter() - started:.0f} s")
    for name, sql in indexes:
        db.execute(sql)
    db.execute("PRAGMA journal_mode=WAL")  # as memory.db leaves every database
    db.close()
    return {"dates": dates, "file_dates": sorted(file_dates), "counts": counts, "files": files.made,
            "links": files.links, "seconds": time.perf_counter() - started}


def _insert_episodes(insert, ids: dict, date: str, clip_rows: list[tuple], sources: list[tuple],
                     rng: np.random.Generator) -> None:
    """One episode per 200 clips (10 minutes) or recording, naming it; 8 highlights a day."""
    recording = {s[0]: s[2] for s in sources}
    episode_rows, members, run = [], [], []
    for i, clip in enumerate(clip_rows):
        run.append(clip)
        if len(run) == 200 or i + 1 == len(clip_rows) or clip_rows[i + 1][1] != clip[1]:
            ids["episode"] += 1
            first, end = run[0], dt.datetime.fromisoformat(run[-1][6]) + dt.timedelta(seconds=CLIP_SECONDS)
            episode_rows.append((ids["episode"], date, len(episode_rows), first[0], run[-1][0], first[6],
                                 _stamp(end), first[4], run[-1][5], len(run), json.dumps([recording[first[1]]]),
                                 json.dumps([round(float(x), 1) for x in rng.uniform(-40, -10, len(run))])))
            members += [(ids["episode"], c[0]) for c in run]
            run = []
    insert("episodes", 'id, date, "index", first_clip_id, last_clip_id, start, "end", start_s, end_s, clips, '
           "recordings, loudness", episode_rows)
    insert("episode_clips", "episode_id, clip_id", members)
    rows = []
    for rank, clip in enumerate(clip_rows[:: max(1, len(clip_rows) // 8)][:8], 1):
        ids["highlight"] += 1
        rows.append((ids["highlight"], date, rank, clip[0], 0.5, json.dumps(["novel", "loud"]),
                     json.dumps({"prediction": 0.2, "novelty": 0.2, "loudness": 0.1})))
    insert("highlights", "id, date, rank, clip_id, score, reasons, components", rows)


def _insert_vectors(insert, paths: Paths, ids: dict, space_ids: dict, date: str, last: str, clip_ids: list[int],
                    frame_ids: list[tuple[int, int]], real: bool, rng: np.random.Generator, now: str) -> None:
    """One shard per space for the day, with its rows; earlier days as ``reembed`` writes them."""
    for space, model, dim in SPACES:
        if space == "vision_frame" and date == last and frame_ids:
            rows = [(c, f, "vision") for c, f in frame_ids]  # the vision stage: one row per frame
        elif space in ("vision_frame", "vision"):
            rows = [(c, None, "vision") for c in clip_ids]  # reembed: the keyframe, one per clip
        elif space == "audio":
            rows = [(c, None, "audio") for c in clip_ids]
        else:
            rows = [(c, None, "vision") for c in clip_ids] + [(c, None, "audio") for c in clip_ids]
        ids["shard"] += 1
        shard_id = ids["shard"]
        path, sums = _write_shard(paths, space, f"{model}@{last}", date, len(rows), dim, real, rng)
        # Read against their sums by the doctor of the night they were written (each once).
        insert("shards", "id, space_id, date, path, rows, dim, complete, created_at, block_sums, verified_at",
               [(shard_id, space_ids[space], date, path, len(rows), dim, 1, now, sums, now)])
        insert("shard_rows", 'shard_id, "row", clip_id, frame_id, modality',
               [(shard_id, i, c, f, m) for i, (c, f, m) in enumerate(rows)])
        if date != last:
            insert("reembedded_days", "space_id, date, shard_id, clips, missing, seconds, created_at",
                   [(space_ids[space], date, shard_id, len(clip_ids), 0, 30.0, now)])


# -- measuring ---------------------------------------------------------------------------------

_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})


def peak_rss_mb():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, from the forked parent.
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


started = time.perf_counter()
from core.paths import Paths
from memory.doctor import doctor
imported = time.perf_counter()
cpu_start = time.process_time()
timings = {{}}
try:
    report = doctor(Paths.at({root!r}), timings=timings, workers={workers!r})
except TypeError:  # a doctor without per-check timings or workers
    report = doctor(Paths.at({root!r}))
done = time.perf_counter()
# This process's CPU and its workers' (reaped when the doctor's pool shut down).
children = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = time.process_time() - cpu_start + children.ru_utime + children.ru_stime
print(json.dumps({{"seconds": done - imported, "workers": report.get("workers", 1), "cpu_seconds": cpu, "import_seconds": imported - started, "timings": timings,
                  "problems": len(report["problems"]), "first_problems": report["problems"][:5],
                  "notes": len(report["notes"]), "ok": report["ok"],
                  "peak_rss_mb": peak_rss_mb()}}))
"""


def run_doctor(root: Path, workers: int | None = None) -> dict:
    """``doctor`` on ``root`` in a fresh Python process: its result summary, wall time and peak RSS."""
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _CHILD.format(repo=str(REPO), root=str(root), workers=workers)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table_bytes(database: Path) -> dict[str, int]:
    """Bytes each table takes in the database file, its indexes included (SQLite's ``dbstat``)."""
    owner = {}
    with sqlite3.connect(database) as db:
        for kind, name, table in db.execute("SELECT type, name, tbl_name FROM sqlite_master"):
            owner[name] = table
        sizes: dict[str, int] = {}
        for name, size in db.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
            table = owner.get(name, name)
            sizes[table] = sizes.get(table, 0) + size
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1]))


def shard_bytes(paths: Paths) -> dict[str, tuple[int, int]]:
    """``{space: (bytes as files say, bytes really on disk)}`` (sparse files take less)."""
    found = {}
    for space_dir in sorted(p for p in paths.embeddings.iterdir() if p.is_dir()):
        logical = allocated = 0
        for f in space_dir.rglob("*.npy"):
            st = f.stat()
            logical += st.st_size
            allocated += st.st_blocks * 512
        found[space_dir.name] = (logical, allocated)
    return found


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=YEAR_CLIPS, help="clips in the year (default: 16 h a day)")
    parser.add_argument("--days", type=int, default=DAYS)
    parser.add_argument("--file-days", type=int, default=3,
                        help="newest days that keep frames, segments, clip files and recordings")
    parser.add_argument("--sources-per-day", type=int, default=16)
    parser.add_argument("--real-vectors", action="store_true", help="write vectors (else sparse shard files)")
    parser.add_argument("--root", help="where to build (default: a temporary folder, removed after)")
    parser.add_argument("--keep", action="store_true", help="leave the store on disk")
    parser.add_argument("--workers", type=int, help="doctor's worker processes (default: its own choice)")
    parser.add_argument("--existing", action="store_true",
                        help="time doctor on a store a --keep run left under --root, without building")
    args = parser.parse_args()

    parent = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="doctor-bench-"))
    root = parent / "root"
    if args.existing:
        if not (root / "memory" / "episodic.sqlite").exists():
            print(f"--existing: no store at {root} (build one with --keep first)", file=sys.stderr)
            return 2
        return _time_existing(args, root)
    if root.exists():
        print(f"{root} exists: give an empty --root", file=sys.stderr)
        return 2
    try:
        return _measure(args, root)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
            if not args.root:
                shutil.rmtree(parent, ignore_errors=True)


def _time_existing(args, root: Path) -> int:
    """``doctor`` on a store built before: its figures, scaled to a year by clips."""
    load = os.getloadavg()
    with sqlite3.connect(root / "memory" / "episodic.sqlite") as db:
        clips, frames = (db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("clips", "frames"))
    print(f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, load {load[0]:.1f} {load[1]:.1f} "
          f"{load[2]:.1f} at start; store {root}: {clips:,} clips, {frames:,} frames")
    result = run_doctor(root, args.workers)
    _print_doctor(result)
    scale = YEAR_CLIPS / clips
    print(f"doctor per year, scaled by clips: {result['seconds'] * scale:.0f} s; target (issue #19) {TARGET_S} s")
    print(f"load at end {os.getloadavg()[0]:.1f}")
    return 0 if result["ok"] else 1


def _print_doctor(result: dict) -> None:
    print(f"doctor ({result['workers']} workers): {result['seconds']:.1f} s wall, {result['cpu_seconds']:.1f} s CPU "
          f"with its workers' (+{result['import_seconds']:.1f} s imports), peak RSS {result['peak_rss_mb']:.0f} MB "
          f"(its own process); ok={result['ok']} problems={result['problems']} notes={result['notes']} "
          f"{result['first_problems']}")
    # With workers the scans run side by side: a check's figure is the wait for its results.
    print("  per check: " + ", ".join(f"{k} {v:.2f} s" for k, v in result["timings"].items()))


def _measure(args, root: Path) -> int:
    load = os.getloadavg()
    print(f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, load {load[0]:.1f} "
          f"{load[1]:.1f} {load[2]:.1f} at start, python {platform.python_version()}, sqlite {sqlite3.sqlite_version}")
    print(f"building {args.clips:,} clips over {args.days} days ({args.file_days} with media) in {root}")
    built = build_store(root, args.clips, days=args.days, file_days=args.file_days,
                        sources_per_day=args.sources_per_day,
                        real_vectors=args.real_vectors, log=print)
    paths = Paths.at(root)
    scale = YEAR_CLIPS / args.clips
    counts = built["counts"]
    print(f"built in {built['seconds']:.0f} s: {built['files']:,} files ({built['links']:,} of them hard links); "
          + ", ".join(f"{t} {n:,}" for t, n in counts.items() if n >= 1000))

    db_size = paths.database.stat().st_size
    tables = table_bytes(paths.database)
    # Tables that grow with clips; the rest (sources, shards, ledger, ...) grow with days.
    per_clip = sum(tables.get(t, 0) for t in PER_CLIP_TABLES)
    more_days = args.days / max(1, len(built["file_dates"])) - 1  # days without media per day with
    with sqlite3.connect(paths.database) as db:  # clips.video_path, cleared by retention
        clip_paths = db.execute("SELECT total(length(video_path) + 1) FROM clips").fetchone()[0]
    media_rows = (sum(tables.get(t, 0) for t in ("frames", "audio_segments")) + clip_paths) * more_days * scale
    year = db_size + per_clip * (scale - 1)
    print(f"database: {db_size:,} bytes ({_gb(db_size)}); per year of {YEAR_CLIPS:,} clips: {_gb(year)} with "
          f"{len(built['file_dates'])} days of frames and segments (derived_days {args.file_days}), "
          f"{_gb(year + media_rows)} with every day's (derived_days null)")
    print("  by table (indexes included): " + ", ".join(f"{t} {_gb(b)}" for t, b in tables.items() if b > 1e6))
    total_logical = 0
    for space, (logical, allocated) in shard_bytes(paths).items():
        total_logical += logical
        print(f"shards {space}: {logical:,} bytes ({_gb(logical * scale)} per year; {allocated:,} on disk here)")
    print(f"shards in all: {_gb(total_logical)}, {_gb(total_logical * scale)} per year")

    result = run_doctor(root, args.workers)
    timings = result["timings"]
    _print_doctor(result)
    # The shard checks read 1,825 shard headers a year whatever the clips, and count the shard
    # rows, which grow with them: left unscaled they give the lower bound, scaled the upper.
    # Every day's media kept (derived_days null): frame and segment checks grow with the days
    # that hold them; a clip's file costs what its segment does (one file per clip, in the same
    # per-recording folders). The clips table is read whole either way.
    upper = result["seconds"] * scale
    lower = timings["shards"] + (result["seconds"] - timings["shards"]) * scale
    # Per-check figures add up to the whole only in one process: with workers, build every
    # day's media (--file-days as --days) to measure that case instead of projecting it.
    if result["workers"] != 1 and more_days > 0:
        print(f"doctor per year, scaled by clips: {lower:.0f} to {upper:.0f} s as built; with every day's media "
              f"kept: not projected with {result['workers']} workers (run --file-days {args.days}, or --workers 1)")
        print(f"load at end {os.getloadavg()[0]:.1f}")
        return 0 if result["ok"] else 1
    media = (timings["frames"] + 2 * timings["audio segments"]) * scale * more_days
    print(f"doctor per year, scaled by clips: {lower:.0f} to {upper:.0f} s as built; {lower + media:.0f} to "
          f"{upper + media:.0f} s with every day's media kept (derived_days null: the frame and segment checks "
          f"of the file days x {more_days + 1:.0f}, once more for clip files)")
    print(f"target (issue #19): {TARGET_S} s; as built / target = {lower / TARGET_S:.2f} to {upper / TARGET_S:.2f}")
    print(f"load at end {os.getloadavg()[0]:.1f}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
