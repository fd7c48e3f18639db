"""Stage ``probes``: how well old memories survive, measured the same way every night.

On the first night with video, a probe set is cut from that day's recordings (they still
exist then: retention runs after this stage) and kept for good under ``memory/probes``: for
up to :data:`PROBES` clips chosen evenly through the day, a photo at the clip's start +
:data:`PHOTO_AT` seconds (between the stored frames, which FFmpeg takes on whole seconds
at 1 fps, so never a stored file) and a :data:`SOUND_SECONDS`-second sound from start +
:data:`SOUND_FROM` seconds, with ``manifest.json`` naming each probe's clip. The set is
never cut again; forgetting its day removes it (:func:`memory.forget_day`), and the next
night with video cuts a new one.

Every night each probe searches the whole memory as a query would
(:func:`stages.recall.search_plan`): it finds its moment when the top hit is its clip.
Recall@1 of the photos (space ``vision``) and of the sounds (``audio``), with chance
(one over the clips in the space), go to the report night after night.

In a sealed memory the probes and the manifest are sealed like every file under the root:
FFmpeg cuts into a private scratch folder outside it (:func:`core.vault.scratch_folder`)
and each cut is sealed from there under the name it has once the set is in place.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from core.atomic import TMP_MARK, atomic_dir
from core.errors import UsageError
from core.vault import Vault, scratch_folder
from ingest.binaries import ffmpeg_path
from memory import active_version, coverage, day_sources
from memory.forget import probe_set_date, probes_folder
from stages import Night
from stages.audio import encode_audio_file
from stages.layout import layout_ranker, reranks
from stages.recall import search_plan, search_planned
from stages.vision import encode_image_file, read_image

log = logging.getLogger(__name__)

PROBES = 24  # enough to tell recall from chance, few enough to measure in seconds every night
PHOTO_AT = 1.45  # seconds into the clip: between two stored frames
SOUND_FROM, SOUND_SECONDS = 0.5, 3.0
MANIFEST = "manifest.json"
# (space, manifest key, metric prefix, encoder)
KINDS = (("vision", "photo", "image", encode_image_file), ("audio", "sound", "sound", encode_audio_file))


def photo_command(source: Path, at: float, out: Path) -> list[str]:
    """FFmpeg: the frame of ``source`` at ``at`` seconds as an image file ``out``."""
    return [ffmpeg_path(), "-nostdin", "-v", "error", "-y", "-ss", f"{at:.3f}", "-i", str(source),
            "-frames:v", "1", "-q:v", "2", str(out)]


def sound_command(source: Path, start: float, seconds: float, out: Path) -> list[str]:
    """FFmpeg: ``seconds`` of ``source``'s first sound track from ``start``, as a mono WAV ``out``."""
    return [ffmpeg_path(), "-nostdin", "-v", "error", "-y", "-ss", f"{start:.3f}", "-t", f"{seconds:.3f}",
            "-i", str(source), "-map", "0:a:0", "-vn", "-ac", "1", "-c:a", "pcm_s16le", str(out)]


def choose_evenly(items: list, k: int) -> list:
    """Up to ``k`` of ``items``, evenly spaced from the first to the last."""
    if len(items) <= k:
        return list(items)
    return [items[i] for i in sorted(set(np.linspace(0, len(items) - 1, k).round().astype(int).tolist()))]


class _NothingCut(Exception):
    """No probe could be cut: the temporary folder goes, and no probe set is stored."""


def _cut(cmd: list[str], out: Path) -> bool:
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if proc.returncode != 0 or not out.is_file() or out.stat().st_size == 0:
        lines = proc.stderr.strip().splitlines()
        log.warning("probes: %s not cut: %s", out.name, lines[-1] if lines else f"exit code {proc.returncode}")
        out.unlink(missing_ok=True)
        return False
    os.chmod(out, 0o600)
    return True


@contextlib.contextmanager
def _cutting_folder(keyring: Vault, tmp: Path) -> Iterator[Path]:
    """Where FFmpeg cuts: the set's temporary folder itself, or a scratch folder outside the
    root when the memory is sealed (its plaintext never lands under the root)."""
    if not keyring.sealing:
        yield tmp
        return
    with scratch_folder("sleep-probes-") as scratch:
        yield scratch


def _file_probe(keyring: Vault, cut: Path, tmp: Path, folder: Path) -> None:
    """Put a cut probe into the set's temporary folder ``tmp``; sealed, it names its place in
    ``folder`` (the set once renamed into place), and its plaintext goes."""
    if cut.parent == tmp:
        return
    keyring.store_file(cut, tmp / cut.name, name_as=folder / cut.name)
    cut.unlink()


def cut_probe_set(night: Night) -> list[dict]:
    """Cut tonight's probe set into ``memory/probes`` (whole or not at all); its probes.

    Returns:
        the manifest's probes (empty, and nothing written, when no clip with video could be cut).
    """
    with night.Session() as session:
        clips = [(source.path, clip.id, clip.start_s, source.has_audio)
                 for source in day_sources(session, night.day) if source.status == "ok" and source.has_video
                 for clip in sorted(source.clips, key=lambda c: c.index) if clip.end_s - clip.start_s > PHOTO_AT]
    clips = [c for c in clips if (night.paths.root / c[0]).is_file()]
    if not clips:
        return []
    folder = probes_folder(night.paths)
    for leftover in folder.parent.glob(f".{folder.name}{TMP_MARK}*"):  # a killed cut
        shutil.rmtree(leftover, ignore_errors=True)
    probes: list[dict] = []
    keyring = night.paths.vault
    try:
        with atomic_dir(folder) as tmp, _cutting_folder(keyring, tmp) as work:
            for n, (source, clip_id, start, has_audio) in enumerate(choose_evenly(clips, PROBES)):
                raw = night.paths.root / source
                photo, sound = work / f"{n:03d}_clip{clip_id}.jpg", work / f"{n:03d}_clip{clip_id}.wav"
                probe = {"clip_id": clip_id, "date": night.day, "source": source, "clip_start_s": start,
                         "photo": None, "sound": None}
                if _cut(photo_command(raw, start + PHOTO_AT, photo), photo):
                    _file_probe(keyring, photo, tmp, folder)
                    probe["photo"] = photo.name
                if has_audio and _cut(sound_command(raw, start + SOUND_FROM, SOUND_SECONDS, sound), sound):
                    _file_probe(keyring, sound, tmp, folder)
                    probe["sound"] = sound.name
                if probe["photo"] or probe["sound"]:
                    probes.append(probe)
            if not probes:
                raise _NothingCut
            manifest = json.dumps({"date": night.day, "photo_at_s": PHOTO_AT, "sound_from_s": SOUND_FROM,
                                   "sound_seconds": SOUND_SECONDS, "probes": probes}, indent=2) + "\n"
            keyring.write_bytes(tmp / MANIFEST, manifest.encode("utf-8"), name_as=folder / MANIFEST)
    except _NothingCut:
        log.warning("probes: nothing could be cut from %s's recordings; the next night with video tries again",
                    night.day)
        return []
    log.info("probes: cut %d probes from %s's recordings into %s", len(probes), night.day, folder)
    return probes


def recall_at_1(night: Night, space: str, probes: list[tuple[int, Path]], encode_file) -> dict:
    """Recall@1 of ``(clip_id, file)`` probes against the whole memory of ``space``.

    Returns:
        ``{"probes", "found", "recall@1", "chance", "clips", "searched": [versions]}``, or
        ``{"note"}`` when the space cannot be searched (nothing stored, no checkpoint).
    """
    active = active_version(night.engine, space)
    if active is None:
        return {"note": f"nothing stored in {space} yet"}
    clips = coverage(night.engine, space, active)["clips"]
    found, first_found, searched = 0, 0, set()
    # A photo's best hits are scored again by layout, as api.query does (stages.layout).
    by_layout = reranks(night.cfg, space) if encode_file is encode_image_file else 0
    try:
        ranker = layout_ranker(night.engine, night.paths, night.cfg, night.device) if by_layout else None
        for clip_id, file in probes:
            plan = search_plan(night.engine, night.paths, space,
                               lambda version: encode_file(file, night.cfg, night.paths, night.device, version))
            hits = search_planned(night.engine, night.paths, space, plan, topk=max(1, by_layout),
                                  options=night.cfg.memory.search)
            first_found += bool(hits) and hits[0].clip_id == clip_id
            if ranker is not None and hits:
                hits = ranker.rerank(read_image(file), hits)
            found += bool(hits) and hits[0].clip_id == clip_id
            searched.update(p.version for p in plan)
    except (UsageError, FileNotFoundError, ValueError) as exc:
        return {"note": f"{space} could not be searched: {exc}"}
    out = {"probes": len(probes), "found": int(found), "recall@1": round(found / len(probes), 4) if probes else None,
           "chance": round(1 / clips, 4) if clips else None, "clips": clips, "searched": sorted(searched)}
    if ranker is not None:  # what the layout adds: the vector search's own top hit, for comparison
        out["vector_recall@1"] = round(first_found / len(probes), 4) if probes else None
    return out


def run(night: Night) -> dict:
    """Cut the probe set if there is none yet, then measure it against the whole memory.

    Returns:
        ``{"date": the probe set's day, "cut_tonight", "probes", "spaces": {space: recall_at_1()},
        "metrics": {"image_recall@1", "image_chance", "sound_recall@1", "sound_chance", ...}}``,
        or a note while there is no probe set.
    """
    started = time.monotonic()
    folder = probes_folder(night.paths)
    cut_tonight = probe_set_date(night.paths) is None and bool(cut_probe_set(night))
    set_date = probe_set_date(night.paths)
    if set_date is None:
        return {"note": "no probe set yet: it is cut on the first night with video", "spaces": {}}
    manifest = json.loads(night.paths.vault.read_text(folder / MANIFEST))
    out: dict = {"date": set_date, "cut_tonight": cut_tonight, "probes": len(manifest["probes"]), "spaces": {}}
    metrics: dict = {"probes": len(manifest["probes"])}
    for space, key, prefix, encode_file in KINDS:
        probes = [(p["clip_id"], folder / p[key]) for p in manifest["probes"] if p.get(key)]
        result = recall_at_1(night, space, probes, encode_file) if probes else {"note": f"no {key}s in the set"}
        out["spaces"][space] = result
        if "recall@1" in result:
            metrics[f"{prefix}_recall@1"], metrics[f"{prefix}_chance"] = result["recall@1"], result["chance"]
            if "vector_recall@1" in result:
                metrics[f"{prefix}_vector_recall@1"] = result["vector_recall@1"]
        log.info("probes: %s recall@1 %s (chance %s) on the set of %s", space, result.get("recall@1"),
                 result.get("chance"), set_date)
    metrics["seconds"] = round(time.monotonic() - started, 3)
    return {**out, "metrics": metrics}
