"""Stage ``vision``: train I-JEPA on the day's frames, embed every frame into memory.

Reads the night's Frame rows (and a replay sample of earlier days', the same number from
every day, a day's keepsake keyframes standing in for frames retention removed), decodes
them once, continues training from last night's checkpoint while distilling last night's
frozen encoder into tonight's (CaSSLe; ``models.jepa.distill_weight``), embeds every frame
with the EMA target encoder, and writes two memory spaces: ``vision_frame`` (one row per
frame, for image search that lands on a frame) and ``vision`` (one row per clip, the mean
of its frames).
Both are tagged ``jepa@{date}``. Safe to run twice: training restarts from the checkpoint
before the night's date and the store replaces the night's shard. A config that changes the
network's shape starts the encoder afresh, with the reason in the result
(``stages.common.resume_state``).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from core.config import SleepConfig
from core.errors import UsageError
from core.paths import Paths
from core.sealed import SealedFileError
from core.vault import open_file
from memory.media import day_frames
from models import health
from models.together import together
from models.vision.embed import embed_fragments, embed_frames, shared_target_encoder
from models.vision.frames import decode_frames, square_frame
from models.vision.jepa import ARCH_KEYS, build_encoder
from models.vision.train import CHECKPOINT_KEYS, train_night
from stages import Night
from stages.common import (
    distill_metrics,
    heldout_positions,
    model_of,
    model_version,
    replay_frame_files,
    resume_state,
    version_checkpoint,
)

log = logging.getLogger(__name__)
MODEL = model_of("vision")
CURVE_POINTS = 200


def downsample(values: list[float], points: int = CURVE_POINTS) -> list[float]:
    """At most ``points`` values: means of equal consecutive runs (keeps the curve's shape)."""
    if len(values) <= points:
        return [round(v, 6) for v in values]
    return [round(float(chunk.mean()), 6) for chunk in np.array_split(np.asarray(values), points)]


def _day_frames(night: Night) -> list[tuple[int, int, str]]:
    with night.Session() as session:
        return [(f.frame_id, f.clip_id, f.path) for f in day_frames(session, night.day)]


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _final(losses: list[float]) -> float:
    """The mean of the last twentieth of a curve (one step is noisy)."""
    return round(float(np.mean(losses[-max(1, len(losses) // 20):])), 6)


def run(night: Night) -> dict:
    """Train, embed and store tonight's vision memory.

    Returns:
        ``{"frames", "embedded", "failed", "replay_frames", "replay", "checkpoint", "model_version",
        "resumed_from", "restart_reason", "metrics": {...}}``; ``replay`` holds the replayed days
        and frames per day, metrics the loss curve, the distillation term (``distill_loss``)
        and the health figures.
    """
    from memory.store import EmbeddingRow, write_embeddings

    cfg = night.cfg.models.jepa
    root = night.paths.root
    rows = _day_frames(night)
    if not rows:
        log.info("vision: no frames for %s; nothing to train or embed", night.day)
        return {"frames": 0, "embedded": 0, "failed": [], "trained": False, "metrics": {}}

    cache = decode_frames([root / path for _, _, path in rows], cfg.img_size, night.device)
    if len(cache.index) == 0:
        raise RuntimeError(f"none of the {len(rows)} frames of {night.day} could be decoded")
    frame_ids = np.array([rows[i][0] for i in cache.index])
    clip_ids = np.array([rows[i][1] for i in cache.index])

    # Frames held out to measure retrieval on unseen frames: a draw by position, seeded by
    # models.jepa.seed (the audio side hashes clip ids instead: stages.common.is_heldout).
    held = heldout_positions(len(cache.index), night.cfg.models.heldout_fraction, cfg.seed)
    train_rows = torch.from_numpy(np.setdiff1d(np.arange(len(cache.index)), held))
    replay_paths, replay_days, replay_counts = replay_frame_files(
        night, cfg.replay_max_frames if cfg.replay_fraction > 0 else 0, cfg.seed)
    replay, per_day = None, {}
    if replay_paths:
        replayed = decode_frames([root / p for p in replay_paths], cfg.img_size, night.device)
        replay = replayed.images
        for i in replayed.index:
            per_day[replay_days[i]] = per_day.get(replay_days[i], 0) + 1
    log.info("vision: %d frames (%d held out), %d replay frames from %d earlier day(s)",
             len(cache.index), len(held), 0 if replay is None else len(replay), len(per_day))

    config = cfg.model_dump(mode="json")
    resume = resume_state(night, MODEL, {k: config[k] for k in ARCH_KEYS}, CHECKPOINT_KEYS)
    result = together(train_night, cfg, cache.images[train_rows], replay, date=night.date,
                      checkpoint_dir=night.paths.checkpoints / MODEL, device=night.device,
                      resume=resume.checkpoint)
    vectors = embed_frames(result.target_encoder, cache.images, batch_size=cfg.embed_batch_size,
                           bf16=cfg.bf16)

    # The baseline: an untrained encoder of the same shape, measured on the same frames.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        random_encoder = build_encoder(cfg).to(night.device)
    random_vectors = embed_frames(random_encoder, cache.images, batch_size=cfg.embed_batch_size,
                                  bf16=cfg.bf16)
    del random_encoder

    version = model_version(MODEL, night.date)
    write_embeddings(night.engine, night.paths, space="vision_frame", model_version=version, date=night.day,
                     rows=[EmbeddingRow(int(c), "vision", int(f)) for c, f in zip(clip_ids, frame_ids)],
                     vectors=vectors)
    clips, inverse = np.unique(clip_ids, return_inverse=True)
    sums = np.zeros((len(clips), vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, vectors)
    means = (sums / np.bincount(inverse)[:, None]).astype(np.float32)
    write_embeddings(night.engine, night.paths, space="vision", model_version=version, date=night.day,
                     rows=[EmbeddingRow(int(c), "vision") for c in clips], vectors=means)

    rank = health.effective_rank(vectors)
    floor = health.rank_floor(cfg.dim, len(vectors), cfg.rank_warn_share)
    collapse = rank < floor
    if collapse:
        log.warning("vision: embeddings may be collapsing: effective rank %.1f < %.1f "
                    "(%.0f%% of the rank they could reach)", rank, floor, 100 * cfg.rank_warn_share)
    # A step skipped for a gradient that was not finite has a NaN or inf loss: the curves
    # leave it out (JSON has no NaN) and skipped_steps counts it.
    losses = _finite(result.losses)
    distill_losses = _finite(result.distill_losses) if result.distill_losses is not None else None
    metrics = {
        "final_loss": _final(losses) if losses else None,
        "loss_curve": downsample(losses),
        "distill_loss": distill_metrics(
            cfg.distill_weight, _final(distill_losses) if distill_losses else None,
            downsample(distill_losses) if distill_losses is not None else None, resume,
            "models.jepa.distill_weight"),
        "steps": result.steps,
        "skipped_steps": result.skipped_steps,
        "global_step": result.global_step,
        "train_seconds": round(result.seconds, 2),
        "images_per_second": round(result.images_per_second, 1),
        "compiled": result.compiled,
        "compile_fallback": result.compile_fallback,
        "embedding_std": round(health.embedding_std(vectors), 6),
        "effective_rank": round(rank, 2),
        "rank_floor": round(floor, 2),
        "dim": cfg.dim,
        "collapse_warning": bool(collapse),
        "heldout_frames": int(len(held)),
        "same_source_retrieval": round(health.same_source_retrieval(vectors, clip_ids, held), 4),
        "same_source_retrieval_random": round(health.same_source_retrieval(random_vectors, clip_ids, held), 4),
        "random_effective_rank": round(health.effective_rank(random_vectors), 2),
    }
    log.info("vision: loss %.4f, rank %.1f, same-clip retrieval %.3f (random encoder %.3f)",
             metrics["final_loss"], rank, metrics["same_source_retrieval"],
             metrics["same_source_retrieval_random"])
    return {
        "frames": len(rows),
        "embedded": int(len(vectors)),
        "clips": int(len(clips)),
        "failed": cache.failed,
        "replay_frames": 0 if replay is None else int(len(replay)),
        "replay": {"days": sorted(per_day), "per_day": dict(sorted(per_day.items())), **replay_counts},
        "checkpoint": result.checkpoint,
        **resume.as_result(),
        "model_version": version,
        "trained": True,
        "metrics": metrics,
    }


# --- query side ------------------------------------------------------------
def read_image(path: str | Path) -> torch.Tensor:
    """Any image PIL reads as a ``(3, H, W)`` uint8 RGB tensor.

    Raises:
        UsageError: the file cannot be read as an image (the message names it and says why).
    """
    path = Path(path)
    try:
        # Through the vault of the root holding it: a probe photo of a sealed memory is sealed.
        with open_file(path) as fh, Image.open(fh) as img:
            pixels = np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError, SealedFileError) as exc:
        raise UsageError(f"{path}: cannot read image ({exc})") from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


def encode_image_file(path: str | Path, cfg: SleepConfig, paths: Paths, device: str,
                      version: str | None = None, grid: int = 0) -> tuple[str, np.ndarray]:
    """Embed an image the way the night embedded its frames.

    Args:
        path: any image PIL reads (JPEG, PNG, ...).
        cfg: the validated config (``cfg.models.jepa`` is used).
        paths: the layout (checkpoints are read from ``paths.checkpoints / "jepa"``).
        device: ``"cpu"`` or ``"cuda"``.
        version: embed with the checkpoint of this version (``"jepa@{date}"``); ``None``
            takes the newest.
        grid: also describe the picture's ``grid x grid`` layout after the vector, as the
            reconstructors take fragments (:func:`models.vision.embed.embed_fragments`).
    Returns:
        ``(model_version, vector)``: ``"jepa@{date}"`` of the checkpoint used and a
        ``(dim,)`` float32 vector, to search the ``vision`` or ``vision_frame`` space.
    Raises:
        UsageError: the file cannot be read as an image, or no vision model is trained yet.
        CheckpointError: the newest checkpoint is unreadable.
    """
    checkpoint = version_checkpoint(paths, "vision", version)
    image = read_image(path)
    encoder = shared_target_encoder(checkpoint, cfg.models.jepa, device)
    frame = square_frame(image, encoder.img_size).unsqueeze(0)
    vector = embed_fragments(encoder, frame, grid=grid, batch_size=1, bf16=cfg.models.jepa.bf16)[0]
    return model_version(MODEL, checkpoint.stem), vector
