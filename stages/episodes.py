"""Stage ``episodes``: the day cut into episodes, and its highlights.

The day's clips, in time order (recordings by their wall-clock start, then by offset), are
described by tonight's vectors: each clip's ``vision`` vector and its ``audio`` vector,
each centred on the day's mean and scaled to unit length, side by side (a clip without
pictures has zeros in the vision half, one without sound in the audio half; a day without
video is cut on its sound alone). Kernel change points over that sequence
(:func:`models.episodes.change_points`, ``episodes.kernel`` and ``episodes.penalty``) cut
it into episodes; a boundary between two recordings is found like any other (two
recordings of the same scene make one episode).

Highlights: every clip gets a score from the parts of it that can be measured tonight,

- ``prediction``: the z-score against the day of the vision model's prediction error on
  the clip's middle frame (tonight's I-JEPA predictor, fixed masks:
  :mod:`models.vision.surprise`): what the model did not see coming;
- ``novelty``: the z-score of the cosine distance from the clip to its nearest moment of
  any earlier day in tonight's versions (earlier days are there once ``reembed`` has moved
  them; none on the first night);
- ``loudness``: how far (absolute z) its loudness in dBFS lies from the day's usual
  level, times ``episodes.loudness_weight``;

and ``episodes.highlights`` clips are picked by maximal marginal relevance over the same
per-clip features (``episodes.mmr_lambda``), each with its reason in words. Episodes and
highlights replace the day's earlier ones in the memory in one transaction (safe to run twice).
"""
from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import soundfile as sf

from core.sealed import SealedFileError
from memory import (
    NewEpisode,
    NewHighlight,
    TimelineClip,
    covered_days,
    load_vectors,
    middle_frames,
    save_episodes,
    timeline,
)
from models import episodes as ep
from stages import Night
from stages.common import tonight_version, version_checkpoint

log = logging.getLogger(__name__)

SENSES = (("vision", "vision"), ("audio", "audio"))  # (space, stage that writes it)
SILENCE_DB = -120.0  # the dBFS of digital silence, so that log(0) stays finite
_CHUNK = 4096  # earlier vectors compared at once


def rms_dbfs(samples: np.ndarray) -> float:
    """Loudness of a sound as RMS in dB relative to full scale (floored at :data:`SILENCE_DB`)."""
    x = np.asarray(samples, np.float64).reshape(-1)
    if x.size == 0:
        return SILENCE_DB
    rms = float(np.sqrt(np.mean(x * x)))
    return max(SILENCE_DB, 20 * np.log10(rms)) if rms > 0 else SILENCE_DB


def _loudness(night: Night, clip: TimelineClip) -> float | None:
    for rel in (clip.audio_path, clip.snippet_path):
        if rel and (night.paths.root / rel).is_file():
            try:
                with night.paths.vault.open(night.paths.root / rel) as fh:  # sealed in a sealed memory
                    samples, _ = sf.read(fh, dtype="float32", always_2d=True)
            except (RuntimeError, OSError, sf.LibsndfileError, SealedFileError) as exc:
                log.warning("episodes: %s unreadable (%s)", rel, exc)
                continue
            return round(rms_dbfs(samples.mean(axis=1)), 2)
    return None


def _sense_vectors(night: Night, space: str, version: str, ids: list[int]) -> np.ndarray | None:
    """``(N, D)`` tonight's vectors of ``space`` in the order of ``ids`` (NaN rows: none); ``None``: none at all."""
    rows, vectors = load_vectors(night.engine, night.paths, space=space, model_version=version, date=night.day)
    if not rows:
        return None
    position = {clip_id: i for i, clip_id in enumerate(ids)}
    out = np.full((len(ids), vectors.shape[1]), np.nan, np.float32)
    for row, vector in zip(rows, vectors):
        if row.clip_id in position:
            out[position[row.clip_id]] = vector
    return out


def features(senses: dict[str, np.ndarray]) -> np.ndarray:
    """Per clip, each sense's centred unit vector side by side (zeros where a clip lacks it)."""
    parts = []
    for vectors in senses.values():
        have = ~np.isnan(vectors).any(axis=1)
        part = np.zeros(vectors.shape, np.float64)
        if have.any():
            part[have] = ep.centred_unit(vectors[have])
        parts.append(part / np.sqrt(len(senses)))
    return np.hstack(parts)


def _novelty(night: Night, space: str, version: str, vectors: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Per clip, the cosine distance to its nearest moment of an earlier day in ``version``
    (NaN: no vector, or no earlier day there), and the earlier days compared."""
    days = sorted(d for d in covered_days(night.engine, space, version) if d < night.day)
    best = np.full(len(vectors), -np.inf)
    have = ~np.isnan(vectors).any(axis=1)
    query = vectors[have].astype(np.float32)
    for day in days:
        _, earlier = load_vectors(night.engine, night.paths, space=space, model_version=version, date=day)
        for start in range(0, len(earlier), _CHUNK):
            sims = query @ earlier[start:start + _CHUNK].T  # stored vectors are unit length
            best[have] = np.maximum(best[have], sims.max(axis=1))
    distance = np.where(np.isinf(best), np.nan, 1.0 - best)
    return distance, days


def _prediction_errors(night: Night, version: str, ids: list[int]) -> tuple[np.ndarray, str | None]:
    """Per clip, tonight's I-JEPA prediction error on its middle frame (NaN: no frame), or a note why none."""
    from core.errors import UsageError
    from models.checkpoint import CheckpointError
    from models.vision.frames import decode_frames
    from models.vision.surprise import load_jepa, prediction_errors

    errors = np.full(len(ids), np.nan)
    with night.Session() as session:
        frames = middle_frames(session, ids)
    have = [i for i, clip_id in enumerate(ids) if clip_id in frames
            and (night.paths.root / frames[clip_id]).is_file()]
    if not have:
        return errors, "no frames to predict"
    cfg = night.cfg.models.jepa
    try:
        model = load_jepa(version_checkpoint(night.paths, "vision", version), cfg, night.device)
    except (UsageError, CheckpointError) as exc:
        return errors, f"no vision model to predict with ({exc})"
    cache = decode_frames([night.paths.root / frames[ids[i]] for i in have], model.encoder.img_size,
                          night.device, progress=False)
    if cache.index:
        values = prediction_errors(model, cache.images, cfg, batch_size=cfg.embed_batch_size, bf16=cfg.bf16)
        errors[[have[j] for j in cache.index]] = values
    return errors, None


def _wall_end(clip: TimelineClip) -> dt.datetime | None:
    return clip.wall_start + dt.timedelta(seconds=clip.end_s - clip.start_s) if clip.wall_start else None


def _iso(when: dt.datetime | None) -> str | None:
    return when.isoformat(timespec="seconds") if when else None


def _evenly(items: list, k: int) -> list:
    if len(items) <= k:
        return list(items)
    return [items[i] for i in sorted(set(np.linspace(0, len(items) - 1, k).round().astype(int).tolist()))]


def run(night: Night) -> dict:
    """Cut tonight's day into episodes, pick its highlights, store both.

    Returns:
        ``{"clips", "senses", "kernel", "penalty", "boundaries", "episodes", "highlights",
        "recordings", "compared_days", "notes", "metrics"}``: ``boundaries`` are clip positions (in time order) where an
        episode starts; each episode has its times, clips, recordings, loudness and
        thumbnail frame paths; each highlight its clip, time, frame, score, parts and reasons.
    """
    cfg = night.cfg.episodes
    with night.Session() as session:
        clips = timeline(session, night.day)
    if not clips:
        return {"clips": 0, "episodes": [], "highlights": [], "notes": ["no clips today"], "metrics": {"episodes": 0}}
    ids = [c.clip_id for c in clips]
    notes: list[str] = []

    # 1. tonight's vectors of each sense, in time order
    versions = {space: tonight_version(night, writer) for space, writer in SENSES}
    senses = {space: v for space in versions
              if (v := _sense_vectors(night, space, versions[space], ids)) is not None}
    if not senses:
        notes.append("no vision or audio vectors tonight: the day is one episode")
    x = features(senses) if senses else np.zeros((len(ids), 1))

    # 2. episodes: change points over the day's clips
    ends = ep.change_points(x, kernel=cfg.kernel, penalty=cfg.penalty, min_size=cfg.min_clips) if senses \
        else [len(ids)]
    loudness = [_loudness(night, c) for c in clips]
    with night.Session() as session:
        frames = middle_frames(session, ids)
    episodes, stored = [], []
    for start, end in ep.segments(ends):
        span = clips[start:end]
        recordings = tuple(dict.fromkeys(c.source_path for c in span))
        new = NewEpisode(tuple(ids[start:end]), span[0].wall_start, _wall_end(span[-1]), span[0].start_s,
                         span[-1].end_s, recordings, tuple(loudness[start:end]))
        stored.append(new)
        episodes.append({"first": start, "clips": end - start, "clip_ids": list(new.clip_ids),
                         "start": _iso(new.start), "end": _iso(new.end), "start_s": new.start_s,
                         "end_s": new.end_s, "recordings": list(recordings), "loudness": list(new.loudness),
                         "thumbnails": [frames[c] for c in _evenly([c for c in new.clip_ids if c in frames],
                                                                   cfg.thumbnails)]})

    # 3. highlights: surprise of each clip, diverse picks
    components: dict[str, np.ndarray] = {}
    if "vision" in senses:
        errors, why = _prediction_errors(night, versions["vision"], ids)
        components["prediction"] = ep.zscores([None if np.isnan(e) else e for e in errors])
        if why:
            notes.append(f"prediction error: {why}")
    novelty = np.full(len(ids), np.nan)
    compared: list[str] = []
    for space, vectors in senses.items():
        distance, days = _novelty(night, space, versions[space], vectors)
        z = ep.zscores([None if np.isnan(d) else d for d in distance])
        novelty = np.where(np.isnan(novelty), z, novelty)  # vision first, sound where no picture
        compared = sorted(set(compared) | set(days))
    if compared:
        components["novelty"] = novelty
    else:
        notes.append("first night: no earlier day to compare with")
    if any(v is not None for v in loudness):
        components["loudness"] = np.abs(ep.zscores(loudness, ep.LOUDNESS_FLOOR_DB)) * cfg.loudness_weight
    scores = ep.highlight_scores(components) if components else np.full(len(ids), np.nan)
    # Alike for MMR: how the clips look and sound, and whether they share an episode (so
    # that the picks spread over the day's episodes before two come from one).
    episode_of_clip = np.repeat(np.arange(len(ends)), np.diff([0, *ends]))
    picks = ep.mmr(scores, np.hstack([x, np.eye(len(ends))[episode_of_clip]]), cfg.highlights, cfg.mmr_lambda)
    highlights, new_highlights = [], []
    for i in picks:
        parts = {name: None if np.isnan(v[i]) else round(float(v[i]), 3) for name, v in components.items()}
        words = ep.reasons(i, components, loudness)
        new_highlights.append(NewHighlight(ids[i], round(float(scores[i]), 4), tuple(words), parts))
        highlights.append({"clip_id": ids[i], "position": i, "when": _iso(clips[i].wall_start),
                           "source_path": clips[i].source_path, "start_s": clips[i].start_s,
                           "frame_path": frames.get(ids[i]), "loudness": loudness[i],
                           "score": round(float(scores[i]), 4), "components": parts, "reasons": words})

    spans = []
    for i, c in enumerate(clips):
        if not spans or spans[-1]["path"] != c.source_path:
            spans.append({"path": c.source_path, "first": i, "clips": 0, "start": _iso(c.wall_start)})
        spans[-1]["clips"] += 1
        spans[-1]["end"] = _iso(_wall_end(c))

    save_episodes(night.engine, night.day, stored, new_highlights)
    log.info("episodes: %d clips -> %d episodes (boundaries at %s), %d highlights", len(ids), len(episodes),
             [e["first"] for e in episodes[1:]], len(highlights))
    return {"clips": len(ids), "senses": {s: versions[s] for s in senses}, "kernel": cfg.kernel,
            "penalty": cfg.penalty, "boundaries": [e["first"] for e in episodes[1:]],
            "episodes": episodes, "highlights": highlights, "recordings": spans, "compared_days": len(compared), "notes": notes,
            "metrics": {"episodes": len(episodes), "highlights": len(highlights),
                        "mean_episode_clips": round(len(ids) / len(episodes), 2)}}
