"""The ingest stage: every file in ``data/raw/{date}/`` -> clips, frames and audio segments.

Files are hashed and probed, then split, in a process pool (``ingest.workers``); the
workers return plain data and this process, the database's only writer, stores each source
in one transaction right after its folders were renamed into place. A run killed in
between leaves either temporary folders (swept by the runner) or folders without rows,
which the rerun replaces whole, so nothing ever looks finished that is not.

A sealed memory's key goes to each worker once, through the pool's initializer
(:func:`core.vault.register`, over the pool's own pipe): never on a command line, in the
environment or in a file.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from core.config import IngestConfig
from core.diskfull import DiskFull
from core.logs import log_to_queue, worker_records
from core.vault import Vault, register
from ingest.extract import (
    Extraction,
    Inspection,
    Job,
    extract_source,
    inspect_file,
    remove_outputs,
    source_key,
)
from ingest.journal import JOURNAL_NAMES
from ingest.plan import Found, Known, plan_day
from ingest.walltime import wall_start
from memory.schema import Source
from memory.sources import (
    ClipRecord,
    day_sources,
    day_totals,
    media_folders,
    save_source,
    source_counts,
    update_sources,
)
from stages import Night

log = logging.getLogger(__name__)

# The settings that shape what a source becomes; changing one re-extracts its sources.
KEY_NAME = re.compile(r"[0-9a-f]{16}")
OUTPUT_SETTINGS = ("clip_seconds", "frame_fps", "frame_short_side", "jpeg_quality",
                   "audio_sample_rate", "write_clips")


def settings_fingerprint(cfg: IngestConfig) -> str:
    """A short hash of :data:`OUTPUT_SETTINGS` (``workers`` does not change outputs)."""
    data = {k: getattr(cfg, k) for k in OUTPUT_SETTINGS}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def list_recordings(raw: Path, extensions: list[str]) -> tuple[list[Path], list[dict]]:
    """Files under ``raw`` (sub-folders included) split into recordings and ignored files.

    Hidden files (``.DS_Store``, editors' temporaries) and the day's journal (``journal.md``,
    ``journal.txt``: stage ``journal`` reads it) are left out silently; a file with an
    extension not in ``ingest.extensions`` is listed as ignored with the reason.
    """
    wanted = {e.lower() for e in extensions}
    recordings, ignored = [], []
    for path in sorted(raw.rglob("*")):
        rel = path.relative_to(raw)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file() or rel.as_posix() in JOURNAL_NAMES:
            continue
        if path.suffix.lower() in wanted:
            recordings.append(path)
        else:
            ignored.append({"file": rel.as_posix(),
                            "reason": f"extension {path.suffix or '(none)'!r} is not in ingest.extensions"})
    return recordings, ignored


@contextlib.contextmanager
def _pool(workers: int, keyring: Vault) -> Iterator[ProcessPoolExecutor]:
    # spawn: the parent holds a database connection and maybe torch threads, which a
    # forked child must not inherit.
    context = multiprocessing.get_context("spawn")
    with worker_records(context) as records, ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_start_worker,
            initargs=(records, str(keyring.root), keyring.master_key if keyring.sealing else None)) as pool:
        yield pool


def _start_worker(records, root: str, master_key: bytes | None) -> None:
    """A worker's set-up: its log lines go to the night's log, and it holds the memory's key."""
    log_to_queue(records)
    if master_key is not None:
        register(root, master_key)


def _output_folders(night: Night, key: str) -> dict[str, Path]:
    p, d = night.paths, night.date
    return {"frames": p.frames(d) / key, "audio": p.audio_segments(d) / key, "clips": p.clips(d) / key}


def _inspect_all(pool, files: list[Path]) -> list[Inspection]:
    """Hash and probe every file in the pool; a crash costs that file only."""
    futures = [pool.submit(inspect_file, str(f)) for f in files]
    results = []
    with tqdm(total=len(files), desc="ingest: hashing", unit="file", disable=not sys.stderr.isatty()) as bar:
        for path, future in zip(files, futures):
            try:
                results.append(future.result())
            except Exception as exc:
                log.exception("ingest: %s: probing failed", path)
                results.append(Inspection(str(path), 0, reason=f"ingest crashed on this file ({exc})"))
            bar.update(1)
    return results


def run(night: Night) -> dict:
    """Ingest the night's recordings.

    Args:
        night: the date, config (``night.cfg.ingest``), layout and database.
    Returns:
        ``processed`` (each source of the day: file, action, duration_s, clips, frames,
        audio_segments, wall_start and where it came from), ``failed`` ([{file, reason}]),
        ``ignored``, ``removed``, the day's totals ``clips``, ``frames``, ``audio_segments``,
        ``footage_seconds``, ``added`` (what this run stored) and ``metrics``.
    """
    cfg, paths, day = night.cfg.ingest, night.paths, night.day
    raw = paths.raw(night.date)
    root = paths.root
    settings = settings_fingerprint(cfg)
    workers = cfg.workers or os.cpu_count() or 1
    started = time.perf_counter()
    files, ignored = list_recordings(raw, cfg.extensions)
    rel = {str(f): f.relative_to(root).as_posix() for f in files}
    shown = lambda path: Path(path).relative_to(raw).as_posix()  # noqa: E731
    failed: list[dict] = []
    added = {"sources": 0, "clips": 0, "frames": 0, "audio_segments": 0}
    extract_seconds = 0.0

    with _pool(workers, paths.vault) as pool, night.Session() as session:
        inspections = {rel[i.path]: i for i in _inspect_all(pool, files)}
        stored = {s.id: s for s in day_sources(session, day)}
        known = [Known(s.id, s.path, s.content_hash, s.status, (s.probe or {}).get("settings"))
                 for s in stored.values()]
        found = [Found(r, i.content_hash, i.reason) for r, i in inspections.items()]
        plan = plan_day(found, known, settings)

        # Cheap bookkeeping first: revived, renamed, removed and dropped rows.
        update_sources(session,
                       [(stored[i], {"status": "ok"}) for i in plan.revive]
                       + [(stored[i], {"path": p, "status": "ok"}) for i, p in plan.renamed]
                       + [(stored[i], {"status": "removed"}) for i in plan.removed],
                       deletes=[stored[i] for i in plan.dropped])
        for i in plan.removed:
            log.warning("ingest: %s is no longer in %s; its clips are kept", stored[i].path, raw)
        for i, new_path in plan.renamed:
            log.info("ingest: %s was renamed; its clips follow it", new_path)
        for path, first in plan.duplicates:
            ignored.append({"file": shown(root / path), "reason": f"same content as {shown(root / first)}"})

        # A broken file where a good recording was keeps that recording's row (and memories).
        remembered = {s.path for s in stored.values() if s.status != "failed"}
        for f, replaces in plan.failed:
            if f.path not in remembered:
                _store_failure(night, session, inspections[f.path], f.path, f.reason,
                               [stored[i] for i in replaces])
            failed.append({"file": shown(root / f.path), "reason": f.reason})

        jobs: dict[Future, tuple[Inspection, str, list[Source]]] = {}
        for f, replaces in plan.extract:
            inspection = inspections[f.path]
            info = inspection.info
            folders = _output_folders(night, source_key(inspection.content_hash, settings))
            job = Job(path=inspection.path, info=info, cfg=cfg, root=str(root),
                      frames_dir=str(folders["frames"]) if info.has_video else None,
                      audio_dir=str(folders["audio"]) if info.has_audio else None,
                      clips_dir=str(folders["clips"]) if info.has_video and cfg.write_clips else None)
            jobs[pool.submit(extract_source, job)] = (inspection, f.path, [stored[i] for i in replaces])

        footage = sum((inspections[f.path].info.duration_s or 0.0) for f, _ in plan.extract)
        with tqdm(total=round(footage, 1), desc=f"ingest: {len(jobs)} files", unit="s",
                  disable=not sys.stderr.isatty()) as bar:
            # Stored in the day's file order, not as workers finish: clip ids, and so the
            # order of a night's training batches, are the same on every run of the day.
            for done, future in enumerate(jobs, 1):
                inspection, path, replaces = jobs[future]
                try:
                    result = future.result()
                except DiskFull:
                    # Not the file's fault: the stage fails and its rerun extracts the file.
                    pool.shutdown(cancel_futures=True)
                    raise
                except Exception as exc:  # a crashed worker costs one file, not the night
                    log.exception("ingest: %s: worker failed", path)
                    result = Extraction(inspection.path, reason=f"ingest crashed on this file ({exc})")
                extract_seconds += result.seconds
                if result.reason:
                    if path not in remembered:
                        _store_failure(night, session, inspection, path, result.reason,
                                       [s for s in replaces if s.status == "failed"])
                    failed.append({"file": shown(inspection.path), "reason": result.reason})
                else:
                    counts = _store_source(night, session, inspection, path, result, replaces, settings)
                    for key, value in counts.items():
                        added[key] += value
                bar.set_postfix_str(f"{done}/{len(jobs)} files")
                bar.update(round(inspection.info.duration_s or 0.0, 1))

        for reason_line in failed:
            log.warning("ingest: skipped %s: %s", reason_line["file"], reason_line["reason"])
        _sweep_orphans(night, session)
        processed, removed = _describe_day(session, day, raw, root, plan)
        totals = day_totals(session, day)

    wall = time.perf_counter() - started
    log.info("ingest: %d files ok, %d skipped, %d clips added in %.1fs", len(processed),
             len(failed), added["clips"], wall)
    return {
        "processed": processed,
        "failed": failed,
        "ignored": ignored,
        "removed": removed,
        **totals,
        "added": added,
        "metrics": {"wall_seconds": round(wall, 3), "workers": workers,
                    "extract_seconds": round(extract_seconds, 3),
                    "footage_seconds_per_second": round(totals["footage_seconds"] / wall, 2) if wall else None},
    }


def _store_failure(night: Night, session, inspection: Inspection, path: str, reason: str,
                   replaces: list[Source]) -> None:
    source = Source(date=night.day, path=path, content_hash=inspection.content_hash or "",
                    size_bytes=inspection.size, status="failed", reason=reason,
                    probe={"info": inspection.info.as_dict()} if inspection.info else None)
    save_source(session, source, [], replaces=replaces)


def _store_source(night: Night, session, inspection: Inspection, path: str, result: Extraction,
                  replaces: list[Source], settings: str) -> dict:
    """Rows for a split source (its folders are already in place); returns what was added."""
    info = inspection.info
    started_at, started_from = wall_start(Path(inspection.path), info.creation_time, night.date)
    rate = night.cfg.ingest.audio_sample_rate
    clips = [ClipRecord(index=c.index, start_s=c.start_s, end_s=c.end_s,
                        wall_start=started_at + dt.timedelta(seconds=c.start_s),
                        video_path=c.video_path, frames=c.frames,
                        audio=(c.audio[0], c.audio[1], rate) if c.audio else None)
             for c in result.clips]
    source = Source(date=night.day, path=path, content_hash=inspection.content_hash,
                    size_bytes=inspection.size, status="ok",
                    duration_s=result.duration_s, has_video=info.has_video,
                    has_audio=info.has_audio, width=info.width, height=info.height,
                    wall_start=started_at, wall_start_from=started_from,
                    probe={"info": info.as_dict(), "settings": settings, "note": result.note,
                           "seconds": round(result.seconds, 3)})
    # The replaced versions' folders, found from their rows (before they go), less the one
    # just written: a file split again with new settings went to a new folder.
    stale = media_folders(session, [s.id for s in replaces if s.id is not None])
    stale -= {str(f.relative_to(night.paths.root)) for f in
              _output_folders(night, source_key(inspection.content_hash, settings)).values()}
    save_source(session, source, clips, replaces=replaces)
    # After the commit: the replaced versions' files (a killed run leaves orphans that the
    # next run's sweep removes, never rows pointing at missing files).
    remove_outputs([night.paths.root / folder for folder in sorted(stale)])
    log.info("ingest: %s: %d clips from %.1fs%s", path, len(clips), result.duration_s,
             f" ({result.note})" if result.note else "")
    return {"sources": 1, "clips": len(clips), "frames": sum(len(c.frames) for c in clips),
            "audio_segments": sum(1 for c in clips if c.audio)}


def _describe_day(session, day: str, raw: Path, root: Path, plan) -> tuple[list[dict], list[dict]]:
    unchanged = set(plan.unchanged) | set(plan.revive) | {i for i, _ in plan.renamed}
    counts = source_counts(session, day)
    processed, removed = [], []
    for source in day_sources(session, day):
        if source.status == "failed":
            continue
        file = root / source.path
        entry = {"file": file.relative_to(raw).as_posix() if file.is_relative_to(raw) else source.path,
                 "duration_s": source.duration_s,
                 **counts.get(source.id, {"clips": 0, "frames": 0, "audio_segments": 0}),
                 "has_video": source.has_video, "has_audio": source.has_audio,
                 "wall_start": source.wall_start.isoformat() if source.wall_start else None,
                 "wall_start_from": source.wall_start_from, "note": (source.probe or {}).get("note")}
        if source.status == "removed":
            removed.append(entry)
        else:
            entry["action"] = "unchanged" if source.id in unchanged else "ingested"
            processed.append(entry)
    return processed, removed


def _sweep_orphans(night: Night, session) -> None:
    """Remove output folders no stored source owns (left when a run was killed between
    renaming a changed file's new folders into place and deleting the old ones)."""
    owned = {Path(folder).name for folder in media_folders(
        session, [s.id for s in day_sources(session, night.day) if s.status != "failed"])}
    for base in (night.paths.frames(night.date), night.paths.audio_segments(night.date),
                 night.paths.clips(night.date)):
        if not base.is_dir():
            continue
        for folder in base.iterdir():
            if folder.is_dir() and KEY_NAME.fullmatch(folder.name) and folder.name not in owned:
                log.info("ingest: removing %s, which no source owns", folder)
                remove_outputs([folder])
