"""Work done in the process pool, one file at a time; it returns plain data, never touches
the database (SQLite has one writer: the parent).

:func:`inspect_file` hashes and probes a file; :func:`extract_source` runs the single
FFmpeg pass into temporary folders, files the outputs by clip and renames the folders
into place. A bad file raises nothing: its result carries the reason.

When the root's memory is sealed, FFmpeg writes into a private scratch folder outside the
root (:func:`core.vault.scratch_folder`) and each output is sealed from there into the
temporary folder under the name it will have once the folder is renamed into place: no
plaintext frame or sound of a sealed memory is ever written under the root. The worker
holds the memory's key because the pool's initializer registered it
(:func:`core.vault.register`).
"""
from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.atomic import atomic_dir
from core.config import IngestConfig
from core.diskfull import DISK_FULL_ERRNOS, DiskFull, ffmpeg_disk_full
from core.sealed import SealedWriter
from core.vault import Vault, scratch_folder, vault
from ingest.binaries import ffmpeg_path
from ingest.clips import clip_of, clip_windows, frame_time
from ingest.command import (
    SEGMENT_LIST,
    OutputDirs,
    build_command,
    describe_ffmpeg_failure,
)
from ingest.probe import MediaError, MediaInfo, probe_file

log = logging.getLogger(__name__)

HASH_CHUNK = 4 << 20
SEAL_CHUNK = 1 << 20
SCRATCH_PREFIX = "sleep-ingest-"
POLL_SECONDS = 0.5  # how often finished clip copies are sealed while FFmpeg runs (sealed memory)


def content_hash(path: Path) -> str:
    """BLAKE2b-256 of the file's bytes, read in chunks (hex)."""
    digest = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def source_key(content_hash_hex: str, settings: str) -> str:
    """Folder name of a source's outputs, from its content and the output settings it is
    split with: two files named alike never clash, and splitting the same file again with
    other settings writes a new folder beside the one its stored rows still name (which goes
    only after the new rows are committed). Memories stored before the settings were part
    of the name keep their folders (``content_hash[:16]``): folders are found from the rows."""
    return hashlib.sha256(f"{content_hash_hex}:{settings}".encode()).hexdigest()[:16]


@dataclass
class Inspection:
    """A raw file's identity and streams (or why it cannot be read)."""

    path: str  # absolute
    size: int
    content_hash: str | None = None
    info: MediaInfo | None = None
    reason: str | None = None


def inspect_file(path: str) -> Inspection:
    """Hash and probe one file; a bad file comes back with ``reason`` set."""
    p = Path(path)
    try:
        size = p.stat().st_size
        digest = content_hash(p)
    except OSError as exc:
        return Inspection(path, 0, reason=f"cannot be read ({exc.strerror or exc})")
    inspection = Inspection(path, size, content_hash=digest)
    try:
        inspection.info = probe_file(p)
    except MediaError as exc:
        inspection.reason = str(exc)
    return inspection


@dataclass
class ExtractedClip:
    index: int
    start_s: float
    end_s: float
    frames: list[tuple[float, str]] = field(default_factory=list)  # (t_s, path rel. to root)
    audio: tuple[str, float] | None = None  # (path rel. to root, seconds)
    video_path: str | None = None


@dataclass
class Extraction:
    """What one source became (or ``reason`` when it failed)."""

    path: str
    duration_s: float = 0.0
    clips: list[ExtractedClip] = field(default_factory=list)
    reason: str | None = None
    note: str | None = None
    seconds: float = 0.0  # wall time spent


@dataclass(frozen=True)
class Job:
    """One source to split: the file, its probe, the config and the final folders."""

    path: str
    info: MediaInfo
    cfg: IngestConfig
    root: str
    frames_dir: str | None
    audio_dir: str | None
    clips_dir: str | None


def _read_segment_list(folder: Path) -> list[tuple[str, float, float]]:
    listing = folder / SEGMENT_LIST
    if not listing.exists():
        return []
    with open(listing, newline="") as fh:
        rows = [(r[0], float(r[1]), float(r[2])) for r in csv.reader(fh) if len(r) >= 3]
    listing.unlink()
    return rows


def _decoded_extent(frames: list[Path], audio: list[tuple[str, float, float]], fps: float) -> float:
    video_end = frame_time(len(frames), fps) if frames else 0.0
    audio_end = max((end for _, _, end in audio), default=0.0)
    return max(video_end, audio_end)


def _file_outputs(job: Job, dirs: OutputDirs, finals: dict[str, Path], stderr: str, *,
                  sealed_copies: Path | None = None) -> Extraction:
    """Name the outputs by clip inside the temporary folders and describe them.

    ``sealed_copies``: where the clip copies were already sealed to (a sealed memory),
    from which unused ones are dropped too.
    """
    cfg, root = job.cfg, Path(job.root)
    frames = sorted(dirs.frames.glob("*.jpg")) if dirs.frames else []
    audio = _read_segment_list(dirs.audio) if dirs.audio else []
    copies = _read_segment_list(dirs.clips) if dirs.clips else []
    decoded = _decoded_extent(frames, audio, cfg.frame_fps)
    # The container's duration rules the count; damaged files without one use what decoded.
    duration = job.info.duration_s or decoded
    windows = clip_windows(duration, cfg.clip_seconds)
    clips = {w.index: ExtractedClip(w.index, w.start_s, w.end_s) for w in windows}

    for frame in frames:
        t = frame_time(int(frame.stem), cfg.frame_fps)
        clip = clips.get(clip_of(t, cfg.clip_seconds))
        if clip is None or t >= clip.end_s:
            frame.unlink()  # beyond the last kept clip (padding)
            continue
        name = f"{clip.index:05d}_{len(clip.frames)}.jpg"
        frame.rename(dirs.frames / name)
        clip.frames.append((t, (finals["frames"] / name).relative_to(root).as_posix()))

    for file_name, start, end in audio:
        clip = clips.get(clip_of(start, cfg.clip_seconds))
        segment = dirs.audio / file_name
        if clip is None or clip.audio is not None or end - start <= 0:
            segment.unlink()
            continue
        name = f"{clip.index:05d}.wav"
        if file_name != name:
            segment.rename(dirs.audio / name)
        clip.audio = ((finals["audio"] / name).relative_to(root).as_posix(), round(end - start, 6))

    # Copied segments start at key frames: a clip's file is the last one starting at or
    # before the clip's start.
    used: set[str] = set()
    for clip in clips.values():
        covering = [name for name, start, _ in copies if start <= clip.start_s + 1e-3]
        if covering:
            clip.video_path = (finals["clips"] / covering[-1]).relative_to(root).as_posix()
            used.add(covering[-1])
    for name, _, _ in copies:
        if name not in used:
            (sealed_copies or dirs.clips).joinpath(name).unlink()

    kept = [c for c in clips.values() if c.frames or c.audio]
    note = None
    if len(kept) < len(clips):
        # A truncated MKV/MPEG-TS decodes up to the cut: keep that, say so, count only it.
        note = (f"damaged: only {len(kept)} of {len(clips)} clips decoded "
                f"({decoded:.1f} s of {duration:.1f} s)")
        duration = min(duration, decoded)
    elif stderr.strip():
        note = "decoded with errors: " + stderr.strip().splitlines()[-1][:200]
    return Extraction(job.path, duration_s=round(duration, 3), clips=kept, note=note)


def _raise_if_disk_full(proc: subprocess.CompletedProcess, tmp: dict[str, Path],
                        finals: dict[str, Path]) -> None:
    """Raise :class:`DiskFull` when FFmpeg could not write for want of space.

    Not a bad file: recorded as one, the source would be skipped for good (ingest is done
    once the night completes), so the night stops instead and its rerun extracts it. FFmpeg
    says so on stderr (``No space left on device``), or is killed by SIGXFSZ at a file
    size limit. The error names the output folder FFmpeg named, else the folder above them all.
    """
    code = errno.EFBIG if proc.returncode == -signal.SIGXFSZ else ffmpeg_disk_full(proc.stderr)
    if code is None:
        return
    named = [finals[name] for name, folder in tmp.items() if str(folder) in proc.stderr]
    folder = named[0] if named else Path(os.path.commonpath([str(f) for f in finals.values()]))
    log.debug("ffmpeg stderr:\n%s", proc.stderr)
    raise DiskFull(folder, code)


def _seal_file(keyring: Vault, plain: Path, dest: Path, final: Path) -> None:
    """Seal the scratch file ``plain`` into ``dest`` (in a temporary folder) as the file
    ``final`` it becomes once the folder is renamed into place, then drop the plaintext.

    Written straight into the temporary folder, with no fsync per file: the folder is
    made durable at once and renamed into place whole, or removed whole
    (:func:`core.atomic.atomic_dir`), as with FFmpeg's own outputs on a plain memory.

    Raises:
        DiskFull: no room under the root, naming ``final``'s folder.
    """
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb") as out, open(plain, "rb") as src:
            sealed = SealedWriter(out, keyring.master_key, keyring.name_of(final))
            while chunk := src.read(SEAL_CHUNK):
                sealed.write(chunk)
            sealed.finish()
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise DiskFull(final.parent, exc.errno) from exc
        raise
    plain.unlink()  # a long recording's outputs need not all sit in memory at once


def _seal_outputs(keyring: Vault, work: dict[str, Path], tmp: dict[str, Path],
                  finals: dict[str, Path]) -> None:
    """Seal every file left in the scratch folders ``work`` into the temporary folders
    ``tmp``, each named for its final place (``finals``)."""
    for name, folder in work.items():
        for plain in sorted(folder.iterdir()):
            _seal_file(keyring, plain, tmp[name] / plain.name, finals[name] / plain.name)


class CopySealer:
    """Seals clip copies while FFmpeg still writes the later ones.

    A copy is the source's own stream, as large as the recording: an hour of phone video
    would not fit a RAM-backed scratch folder whole. The segment muxer lists a copy in its
    segment list when it has written it; a copy is sealed once a later one is listed too
    (by then FFmpeg has closed it), the last ones when FFmpeg has exited. Copy names never
    change (:func:`_file_outputs` only drops unused ones), so each is sealed at once under
    its final name.
    """

    def __init__(self, keyring: Vault, work: Path, tmp: Path, final: Path):
        self.keyring, self.work, self.tmp, self.final = keyring, work, tmp, final
        self.sealed: set[str] = set()

    def __call__(self, finished: bool = False) -> None:
        listing = self.work / SEGMENT_LIST
        if not listing.exists():
            return
        with open(listing, newline="") as fh:
            rows = list(csv.reader(fh))
        # Until FFmpeg exits the last row waits: its copy may be open still, or the row itself
        # cut short.
        for name in [row[0] for row in (rows if finished else rows[:-1]) if len(row) >= 3]:
            if name not in self.sealed:
                _seal_file(self.keyring, self.work / name, self.tmp / name, self.final / name)
                self.sealed.add(name)


def _run_ffmpeg(cmd: list[str], while_running=None) -> subprocess.CompletedProcess:
    """Run FFmpeg to the end, calling ``while_running()`` every :data:`POLL_SECONDS` meanwhile.

    If ``while_running`` raises, FFmpeg is killed and the error goes on.
    """
    if while_running is None:
        return subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          errors="replace") as proc:
        said: list[str] = []
        reader = threading.Thread(target=lambda: said.append(proc.stderr.read()), daemon=True)
        reader.start()
        try:
            while True:
                try:
                    proc.wait(timeout=POLL_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    while_running()
        except BaseException:
            proc.kill()
            raise
        finally:
            reader.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, "", said[0] if said else "")


def extract_source(job: Job) -> Extraction:
    """Split one source with a single FFmpeg pass; outputs land in their final folders.

    Args:
        job: the file, its probe, the config and the final output folders.
    Returns:
        an :class:`Extraction`; ``reason`` is set (and nothing is left on disk) when
        FFmpeg could not split the file.
    Raises:
        DiskFull: FFmpeg found no room for its outputs (nothing is left on disk either).
        MasterKeyError: the root's memory is sealed and this process was handed no key.
    """
    started = time.perf_counter()
    info = job.info
    keyring = vault(job.root)
    finals = {name: Path(p) for name, p in
              (("frames", job.frames_dir), ("audio", job.audio_dir), ("clips", job.clips_dir))
              if p is not None}
    try:
        with contextlib.ExitStack() as stack:
            # Each folder is renamed into place only if the whole block succeeds.
            tmp = {name: stack.enter_context(atomic_dir(final)) for name, final in finals.items()}
            work, shown = tmp, finals
            if keyring.sealing:
                # Left last, so removed first: the plaintext goes before the folders are renamed.
                scratch = stack.enter_context(scratch_folder(SCRATCH_PREFIX))
                work = {name: scratch / name for name in finals}
                for folder in work.values():
                    folder.mkdir()
                # FFmpeg only writes to the scratch folder: that is where room ran out.
                shown = {name: scratch.parent for name in finals}
            dirs = OutputDirs(work.get("frames"), work.get("audio"), work.get("clips"))
            copies = (CopySealer(keyring, work["clips"], tmp["clips"], finals["clips"])
                      if keyring.sealing and "clips" in finals else None)
            cmd = build_command(Path(job.path), info, job.cfg, dirs, ffmpeg_path())
            log.debug("ffmpeg: %s", subprocess.list2cmdline(cmd))
            proc = _run_ffmpeg(cmd, copies)
            _raise_if_disk_full(proc, work, shown)
            if proc.returncode != 0:
                log.debug("ffmpeg stderr for %s:\n%s", job.path, proc.stderr)
                raise MediaError(describe_ffmpeg_failure(proc.stderr))
            if copies is not None:
                copies(finished=True)
            result = _file_outputs(job, dirs, finals, proc.stderr,
                                   sealed_copies=tmp["clips"] if copies is not None else None)
            if not result.clips:
                raise MediaError("cannot decode: FFmpeg read the file but no frame or audio "
                                 "came out" + (f" ({proc.stderr.strip().splitlines()[-1]})"
                                               if proc.stderr.strip() else ""))
            if keyring.sealing:
                _seal_outputs(keyring, work, tmp, finals)
    except MediaError as exc:
        return Extraction(job.path, reason=str(exc), seconds=time.perf_counter() - started)
    # A source that got no frames (or no audio) must not keep an empty folder around.
    for name, final in finals.items():
        with contextlib.suppress(OSError):
            final.rmdir()  # only succeeds when empty
    result.seconds = time.perf_counter() - started
    return result


def remove_outputs(folders: list[Path]) -> None:
    """Delete a source's output folders (its file changed, or its clips were replaced)."""
    for folder in folders:
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
