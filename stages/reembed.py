"""Stage ``reembed``: earlier days into tonight's model versions, so one query reaches the whole memory.

Each night's encoders write a new version of their spaces holding only that night. This
stage embeds every earlier day again with tonight's networks, into tonight's versions:

- ``vision_frame`` and ``vision``: each clip's kept keyframe (one row per clip) through
  tonight's JEPA target encoder;
- ``audio``: each clip's kept snippet through tonight's CPC;
- ``shared``: tonight's alignment heads applied to those vision and audio vectors (the
  versions the heads were trained on, read back from the store);
- ``sae``: tonight's dictionary applied to its input space's vectors of the day.

A clip older than keepsakes falls back to its frame or audio segment while they are on
disk; one with neither is counted as missing. Days go oldest last use first
(:func:`memory.by_last_use`: a day is used by its night and by each query returning one of
its moments), spaces in that order,
in batches of ``memory.reembed.batch_size`` on the night's device, until
``memory.reembed.max_minutes`` is spent; what is left waits for ``sleep.py memory reembed``
or a rerun. Each (space, day) is written whole (:func:`memory.write_embeddings`) and then
recorded (:func:`memory.record_day`), so a killed run redoes at most the day it was on, and
since every day is embedded on its own, in clip order, in eval mode, a rerun writes the
same vectors bit for bit. A space switches to tonight's version
(:func:`memory.activate_if_complete`) only once that version covers every day with vectors
in the space; until then queries read the version they read before. With
``memory.reembed.drop_superseded``, the versions older than the active one go then, each
only once the active one holds every clip it holds (:func:`memory.drop_superseded`).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from core.config import SaeConfig
from core.errors import UsageError
from core.progress import bar_off
from memory import (
    EmbeddingRow,
    activate_if_complete,
    active_version,
    by_last_use,
    coverage,
    covered_days,
    day_clips,
    day_keepsakes,
    days_to_reembed,
    drop_superseded,
    load_vectors,
    middle_frames,
    record_day,
    write_embeddings,
)
from memory.maps import save_map
from memory.media import day_segments
from memory.versions import version_date
from models.align.train import project
from models.audio.features import AudioReadError, log_mel_batches, read_wav
from models.audio.train import embed_features
from models.checkpoint import load_checkpoint
from models.sae.train import build as build_sae
from models.space_map import fit_space_map
from models.sae.train import encode as sae_encode
from models.vision.embed import embed_frames, load_target_encoder
from models.vision.frames import decode_frames
from stages import Night, stage, writer_of
from stages.align import load_latest_align, mean_per_clip
from stages.audio import load_latest_cpc
from stages.common import tonight_version, version_checkpoint
from stages.recall import MAPPED

log = logging.getLogger(__name__)

# The order a day's spaces are filled in: each one after those it is computed from.
SPACES = ("vision_frame", "vision", "audio", "shared", "sae")
STAGE_NAMES = ("vision", "audio", "align", "sae")


@dataclass
class DayVectors:
    """One space's vectors of one day in the target version (``rows`` empty: nothing to write)."""

    rows: list[EmbeddingRow]
    vectors: np.ndarray
    missing: int  # clips the space held that day that could not be embedded again
    inputs: int = 0  # keyframes or snippets decoded (0 for spaces computed from other vectors)


@dataclass
class SpaceRun:
    """What one space got tonight."""

    version: str
    todo: list[str]
    done: int = 0
    clips: int = 0
    missing: int = 0
    inputs: int = 0
    seconds: float = 0.0
    blocked: list[str] = field(default_factory=list)


def usable(night: Night, wanted: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The ``{space: version}`` of ``wanted`` whose checkpoint is there, and a note for each other.

    Returns:
        ``(targets, notes {space: why not})``: a version without its checkpoint (its stage
        trained nothing that night, or checkpoint retention removed it) cannot embed anything.
    """
    targets, notes = {}, {}
    for space, version in wanted.items():
        try:
            version_checkpoint(night.paths, writer_of(space).name, version)
        except UsageError:
            notes[space] = f"no checkpoint of {version} (its stage trained nothing); nothing to re-embed with"
            continue
        targets[space] = version
    return targets, notes


def tonight_targets(night: Night) -> tuple[dict[str, str], dict[str, str]]:
    """Tonight's version of each space this stage fills, and a note for each it skips."""
    return usable(night, {space: tonight_version(night, name)
                          for name in STAGE_NAMES for space in stage(name).spaces})


def run(night: Night) -> dict:
    """Re-embed earlier days into tonight's versions within ``memory.reembed.max_minutes``.

    Returns:
        :func:`reembed`'s result, or a note when ``memory.reembed.enabled`` is false.
    """
    cfg = night.cfg.memory.reembed
    if not cfg.enabled:
        return {"note": "memory.reembed.enabled is false: queries read each space's last complete "
                        "version", "spaces": {}}
    targets, notes = tonight_targets(night)
    return reembed(night, targets, max_minutes=cfg.max_minutes, notes=notes)


class _Encoders:
    """Tonight's networks, each loaded once per run."""

    def __init__(self, night: Night):
        self.night = night
        self.cache: dict[tuple[str, str], object] = {}

    def get(self, kind: str, version: str):
        key = (kind, version)
        if key not in self.cache:
            self.cache[key] = getattr(self, f"_load_{kind}")(version)
        return self.cache[key]

    def _load_vision(self, version: str):
        checkpoint = version_checkpoint(self.night.paths, "vision", version)
        return load_target_encoder(checkpoint, self.night.cfg.models.jepa, self.night.device)

    def _load_audio(self, version: str):
        return load_latest_cpc(self.night.paths, self.night.device, version)[1]

    def _load_align(self, version: str):
        checkpoint = load_checkpoint(version_checkpoint(self.night.paths, "align", version),
                                     ("vision_version", "audio_version"))
        model = load_latest_align(self.night.paths, self.night.device, version)[1]
        return model, checkpoint["vision_version"], checkpoint["audio_version"]

    def _load_sae(self, version: str):
        checkpoint = load_checkpoint(version_checkpoint(self.night.paths, "sae", version),
                                     ("model", "config", "n_inputs", "input_version"))
        model = build_sae(int(checkpoint["n_inputs"]), SaeConfig(**checkpoint["config"]))
        model.load_state_dict(checkpoint["model"])
        model = model.to(self.night.device).eval()
        return model, checkpoint.get("input_space", "shared"), checkpoint["input_version"]


def _expected(night: Night, space: str, version: str, day: str) -> list[int]:
    with night.Session() as session:
        return sorted({clip for clip, _ in day_clips(session, space, day, version)})


def _keyframe_vectors(night: Night, encoders: _Encoders, version: str, day: str,
                      clips: list[int]) -> tuple[list[int], np.ndarray]:
    """Each clip's keyframe (else its middle frame, while on disk) through the target encoder.

    Returns:
        ``(clip_ids, (N, dim) vectors)`` of the clips that could be embedded, in clip order.
    """
    root = night.paths.root
    with night.Session() as session:
        kept = {k.clip_id: k.keyframe for k in day_keepsakes(session, day) if k.keyframe}
        frames = middle_frames(session, [c for c in clips if c not in kept])
    chosen: list[tuple[int, str]] = []
    for clip in clips:
        for path in (kept.get(clip), frames.get(clip)):
            if path is not None and (root / path).is_file():
                chosen.append((clip, path))
                break
    if not chosen:
        return [], np.zeros((0, 0), np.float32)
    encoder = encoders.get("vision", version)
    batch = night.cfg.memory.reembed.batch_size
    cache = decode_frames([root / p for _, p in chosen], encoder.img_size, night.device, chunk=batch,
                          progress=False)
    vectors = embed_frames(encoder, cache.images, batch_size=batch, bf16=night.cfg.models.jepa.bf16)
    return [chosen[i][0] for i in cache.index], vectors


def _vision_day(night: Night, encoders: _Encoders, space: str, version: str, day: str,
                cache: dict) -> DayVectors:
    """One row per clip, its keyframe's vector (in ``vision_frame`` too: the keyframe is its frame)."""
    clips = _expected(night, space, version, day)
    fresh = (version, day) not in cache
    if fresh:  # vision_frame and vision share the keyframe vectors
        cache.clear()
        cache[(version, day)] = _keyframe_vectors(night, encoders, version, day, clips)
    clip_ids, vectors = cache[(version, day)]
    wanted = set(clips)
    keep = [i for i, c in enumerate(clip_ids) if c in wanted]
    rows = [EmbeddingRow(clip_ids[i], "vision") for i in keep]
    return DayVectors(rows, vectors[keep] if keep else vectors, len(clips) - len(rows),
                      len(clip_ids) if fresh else 0)


def _audio_day(night: Night, encoders: _Encoders, version: str, day: str) -> DayVectors:
    clips = _expected(night, "audio", version, day)
    root = night.paths.root
    with night.Session() as session:
        kept = {k.clip_id: k.snippet for k in day_keepsakes(session, day) if k.snippet}
        segments = {s.clip_id: s.path for s in day_segments(session, day)}
    model = encoders.get("audio", version)
    cfg = model.cfg.model_copy(update={"embed_batch_size": night.cfg.memory.reembed.batch_size})
    read_ids, waves = [], []
    for clip in clips:
        for path in (kept.get(clip), segments.get(clip)):
            if path is None or not (root / path).is_file():
                continue
            try:
                waves.append(read_wav(root / path, cfg.sample_rate))
            except AudioReadError as exc:
                log.warning("reembed: %s left out: %s", path, exc)
                continue
            read_ids.append(clip)
            break
    if not waves:
        return DayVectors([], np.zeros((0, 0), np.float32), len(clips))
    features = log_mel_batches(waves, cfg, night.device, batch_size=cfg.embed_batch_size)
    vectors, kept_rows = embed_features(model, features, cfg, night.device)
    rows = [EmbeddingRow(read_ids[i], "audio") for i in kept_rows]
    return DayVectors(rows, vectors, len(clips) - len(rows), len(waves))


def _ready(night: Night, space: str, version: str, day: str) -> bool:
    """Whether ``version`` of ``space`` already covers ``day`` (so its vectors can be read)."""
    with night.Session() as session:
        return day not in days_to_reembed(session, space, version)


def _shared_day(night: Night, encoders: _Encoders, version: str, day: str) -> DayVectors | None:
    model, vision_version, audio_version = encoders.get("align", version)
    if not (_ready(night, "vision", vision_version, day) and _ready(night, "audio", audio_version, day)):
        return None
    clips = _expected(night, "shared", version, day)
    parts, rows = [], []
    for modality, space, source in (("vision", "vision", vision_version), ("audio", "audio", audio_version)):
        stored, vectors = load_vectors(night.engine, night.paths, space=space, model_version=source, date=day)
        ids, means = mean_per_clip([r.clip_id for r in stored], vectors)
        if ids:
            parts.append(project(model, means, modality, night.device))
            rows += [EmbeddingRow(c, modality) for c in ids]
    vectors = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    return DayVectors(rows, vectors, len(set(clips) - {r.clip_id for r in rows}))


def _sae_day(night: Night, encoders: _Encoders, version: str, day: str) -> DayVectors | None:
    model, input_space, input_version = encoders.get("sae", version)
    if not _ready(night, input_space, input_version, day):
        return None
    clips = _expected(night, "sae", version, day)
    stored, vectors = load_vectors(night.engine, night.paths, space=input_space, model_version=input_version,
                                   date=day)
    if not stored:
        return DayVectors([], np.zeros((0, 0), np.float32), len(clips))
    activations = sae_encode(model, vectors, night.device, batch_size=night.cfg.memory.reembed.batch_size)
    fired = activations.max(axis=1) > 0  # as the sae stage: a silent row is not stored
    rows = [EmbeddingRow(r.clip_id, r.modality, r.frame_id) for r, f in zip(stored, fired) if f]
    return DayVectors(rows, activations[fired], len(set(clips) - {r.clip_id for r in rows}))


def _day(night: Night, encoders: _Encoders, space: str, version: str, day: str, cache: dict) -> DayVectors | None:
    if space in ("vision_frame", "vision"):
        return _vision_day(night, encoders, space, version, day, cache)
    if space == "audio":
        return _audio_day(night, encoders, version, day)
    if space == "shared":
        return _shared_day(night, encoders, version, day)
    return _sae_day(night, encoders, version, day)


@torch.no_grad()
def reembed(night: Night, targets: dict[str, str], *, max_minutes: float | None = None,
            notes: dict[str, str] | None = None) -> dict:
    """Fill ``targets``' versions with every earlier day they lack, then switch the complete ones.

    Args:
        night: the database, layout, config and device (its date is not used: each target
            names its own version).
        targets: ``{space: version}`` to fill, spaces among :data:`SPACES`.
        max_minutes: stop starting new (space, day) units after this long; ``None``: no limit.
        notes: ``{space: why it is skipped}``, carried into the result.
    Returns:
        ``{"spaces": {space: {"version", "active", "activated", "days_done", "days_left",
        "clips", "missing", "seconds", "clips_per_second", "coverage", "active_coverage",
        "dropped": [versions], "kept_superseded": {version: why}, "bytes_freed", "note"?}},
        "stopped_early", "metrics": {"seconds", "keyframes", "keyframes_per_second",
        "snippets"}}``.
    """
    started = time.monotonic()
    deadline = math.inf if max_minutes is None else started + 60 * max_minutes
    runs: dict[str, SpaceRun] = {}
    spaces_out: dict[str, dict] = {space: {"note": note} for space, note in (notes or {}).items()}
    for space in SPACES:
        version = targets.get(space)
        if version is None:
            continue
        current = active_version(night.engine, space)
        if current and (version_date(current) or "") > (version_date(version) or ""):
            spaces_out[space] = {"version": version, "note": f"a newer version ({current}) is active"}
            continue
        with night.Session() as session:
            runs[space] = SpaceRun(version, days_to_reembed(session, space, version))
    with night.Session() as session:  # oldest last use first: what does not fit waits for later nights
        days = by_last_use(session, {d for r in runs.values() for d in r.todo})
    log.info("reembed: %d earlier day(s) to move into %s", len(days),
             ", ".join(sorted({r.version for r in runs.values()})) or "nothing")

    encoders, cache, stopped = _Encoders(night), {}, False
    for day in tqdm(days, desc="reembed", unit="day", disable=bar_off(True, len(days) < 2)):
        for space, state in runs.items():
            if day not in state.todo:
                continue
            if time.monotonic() >= deadline:
                stopped = True
                break
            begun = time.monotonic()
            made = _day(night, encoders, space, state.version, day, cache)
            if made is None:  # the vectors it is computed from are not there yet
                state.blocked.append(day)
                continue
            if made.rows:
                write_embeddings(night.engine, night.paths, space=space, model_version=state.version, date=day,
                                 rows=made.rows, vectors=made.vectors)
            seconds = time.monotonic() - begun
            clips = len({r.clip_id for r in made.rows})  # shared and sae have a row per sense
            record_day(night.engine, space=space, version=state.version, date=day, clips=clips,
                       missing=made.missing, seconds=seconds)
            state.done += 1
            state.clips += clips
            state.missing += made.missing
            state.inputs += made.inputs
            state.seconds += seconds
            log.debug("reembed: %s %s: %d clips, %d missing, %.2fs", space, day, clips, made.missing, seconds)
        if stopped:
            log.warning("reembed: memory.reembed.max_minutes=%s spent; the rest waits for the next run "
                        "(sleep.py memory reembed)", max_minutes)
            break

    maps = fit_maps(night, encoders, runs)
    for space, state in runs.items():
        activated = activate_if_complete(night.engine, space, state.version)
        active = active_version(night.engine, space)
        superseded = drop_superseded(night.engine, night.paths, space) \
            if night.cfg.memory.reembed.drop_superseded else {"dropped": [], "kept": {}, "bytes_freed": 0}
        spaces_out[space] = {
            "version": state.version, "active": active, "activated": activated,
            "days_done": state.done, "days_left": len(state.todo) - state.done, "blocked": state.blocked,
            "clips": state.clips, "missing": state.missing, "seconds": round(state.seconds, 3),
            "clips_per_second": round(state.clips / state.seconds, 1) if state.seconds > 0 else None,
            "coverage": _brief(coverage(night.engine, space, state.version)),
            "active_coverage": _brief(coverage(night.engine, space, active)) if active else None,
            "dropped": superseded["dropped"], "kept_superseded": superseded["kept"],
            "bytes_freed": superseded["bytes_freed"],
        }
        if space in maps:
            spaces_out[space]["map"] = maps[space]
        log.info("reembed: %s: %d day(s) into %s (%d clips, %d missing, %.1fs); %d left; active %s",
                 space, state.done, state.version, state.clips, state.missing, state.seconds,
                 len(state.todo) - state.done, active)
    vision = [runs[s] for s in ("vision_frame", "vision") if s in runs]
    keyframes = sum(r.inputs for r in vision)
    vision_seconds = sum(r.seconds for r in vision)
    return {
        "spaces": spaces_out, "stopped_early": stopped,
        "metrics": {"seconds": round(time.monotonic() - started, 3), "keyframes": keyframes,
                    "keyframes_per_second": round(keyframes / vision_seconds, 1) if vision_seconds > 0 else None,
                    "snippets": runs["audio"].inputs if "audio" in runs else 0},
    }


def _map_pairs(night: Night, encoders: _Encoders, space: str, version: str, active: str,
               limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``limit`` clips' vectors in ``version`` and in ``active``, row for row.

    The days already re-embedded tonight are read back; the other earlier days, newest
    first, are embedded from their keyframes or snippets for the fit only (not stored).
    """
    days = sorted((d for d in covered_days(night.engine, space, active) if d != night.day), reverse=True)
    new, old, cache = [], [], {}
    for day in days:
        if sum(len(v) for v in new) >= limit:
            break
        old_rows, old_vectors = load_vectors(night.engine, night.paths, space=space, model_version=active, date=day)
        new_rows, new_vectors = load_vectors(night.engine, night.paths, space=space, model_version=version, date=day)
        if not new_rows:
            made = _day(night, encoders, space, version, day, cache)
            if made is None or not made.rows:
                continue
            new_rows, new_vectors = made.rows, made.vectors
        where = {r.clip_id: i for i, r in enumerate(old_rows)}
        pairs = [(i, where[r.clip_id]) for i, r in enumerate(new_rows) if r.clip_id in where]
        if pairs:
            new.append(new_vectors[[i for i, _ in pairs]])
            old.append(old_vectors[[j for _, j in pairs]])
    if not new:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(new)[:limit], np.concatenate(old)[:limit]


def fit_maps(night: Night, encoders: _Encoders, runs: dict[str, "SpaceRun"]) -> dict[str, dict]:
    """Where tonight's version does not cover the memory yet, a map from it to the active version.

    A query embedded by tonight's encoder then reaches the days not re-embedded yet through
    the map (:func:`stages.recall.map_query`), at once, instead of waiting nights for the re-embedding.
    Fitted on ``vision`` (and serving ``vision_frame``, the same encoder's space) and on
    ``audio``; ``shared`` and ``sae`` are derived from those and are not mapped.

    Returns:
        ``{space: {"to_version", "chosen", held-out figures...}}`` or ``{space: {"note"}}``.
    """
    cfg = night.cfg.memory.reembed
    out: dict[str, dict] = {}
    for space, served in MAPPED.items():
        state = runs.get(space)
        active = active_version(night.engine, space)
        if state is None or active is None or active == state.version \
                or coverage(night.engine, space, state.version)["complete"]:
            continue
        new, old = _map_pairs(night, encoders, space, state.version, active, cfg.map_fit_clips)
        if len(new) < 8:
            out[space] = {"to_version": active, "note": f"{len(new)} clips in both versions: too few to fit a map"}
            continue
        fitted = fit_space_map(new, old, alpha=cfg.ridge_alpha, heldout_fraction=cfg.map_heldout_fraction,
                               seed=night.cfg.runtime.seed)
        for target in served:
            to_version = active_version(night.engine, target)
            if to_version == active:
                save_map(night.engine, night.paths, space=target, from_version=state.version, to_version=active,
                         kind=fitted.kind, arrays=fitted.arrays(), heldout=fitted.heldout)
        out[space] = {"to_version": active, **fitted.heldout}
        chosen = fitted.heldout.get(fitted.heldout["chosen"]) or {}
        log.info("reembed: map %s %s -> %s (%s on %d clips): held-out cosine %s, recall@1 %s (chance %s)",
                 space, state.version, active, fitted.kind, len(new), chosen.get("cosine"),
                 chosen.get("recall@1"), chosen.get("chance"))
    return out


def _brief(cov: dict) -> dict:
    return {k: cov[k] for k in ("clips", "days", "days_total", "missing_clips", "complete")}


def latest_targets(night: Night, space: str | None = None, version: str | None = None) -> dict[str, str]:
    """What ``sleep.py memory reembed`` fills: ``version``'s spaces, else each space's newest version.

    Raises:
        UsageError: an unknown space, or a version no space here holds.
    """
    from memory import latest_version, space_dim

    if space is not None and space not in SPACES:
        raise UsageError(f"--space {space}: expected one of {', '.join(SPACES)}")
    wanted = [space] if space else list(SPACES)
    if version is None:
        found = {s: latest_version(night.engine, s) for s in wanted}
        return {s: v for s, v in found.items() if v is not None}
    model = version.partition("@")[0]
    spaces = [s for s in wanted if writer_of(s).model == model and space_dim(night.engine, s, version) is not None]
    if not spaces:
        raise UsageError(f"--version {version}: no {space or 'space'} holds that version "
                         f"(sleep.py memory versions lists them)")
    return {s: version for s in spaces}
