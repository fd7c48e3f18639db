"""Stage ``align``: tie the day's vision and audio spaces together and write ``shared``.

Reads tonight's ``vision`` vectors (the latest vision model) and ``audio`` vectors
(``cpc@{date}``) from the memory store, trains the projection heads on the clips that have
both (continuing last night's heads when their shapes still fit), measures audio->video
and video->audio retrieval on held-out clips, and writes every clip's shared-space vector
from whichever senses it has (modality ``vision`` and/or ``audio``) as ``align@{date}``.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from core.config import AlignConfig, SleepConfig
from core.errors import UsageError
from core.paths import Paths
from models.align.heads import MODALITIES, AlignModel
from models.align.train import evaluate_alignment, project, train_alignment
from models.checkpoint import load_checkpoint
from models.together import together
from stages import Night
from stages.common import (
    heldout_mask,
    model_of,
    model_version,
    night_seed,
    resume_state,
    save_night_checkpoint,
    tonight_version,
    version_checkpoint,
)

log = logging.getLogger(__name__)

MODEL = model_of("align")
SPACE = "shared"


def load_space(night: Night, space: str, model_version: str) -> tuple[list[int], np.ndarray]:
    """The day's vectors of one space, one per clip: ``(clip_ids, (N, D))``.

    Rows of the same clip (per-frame rows, if a space has them) are averaged.
    """
    from memory import store

    loader = getattr(store, "load_vectors", None)
    if loader is None:
        raise RuntimeError("memory.store has no load_vectors(engine, paths, *, space, model_version, date)"
                           " -> (rows, vectors); the align stage needs it to read the day's vectors")
    rows, vectors = loader(night.engine, night.paths, space=space, model_version=model_version, date=night.day)
    return mean_per_clip([r.clip_id for r in rows], np.asarray(vectors, dtype=np.float32))


def mean_per_clip(clip_ids: list[int], vectors: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Average the rows that share a clip id; clips in ascending id order."""
    if len(clip_ids) == 0:
        return [], vectors.reshape(0, vectors.shape[-1] if vectors.ndim == 2 else 0)
    ids = np.asarray(clip_ids)
    unique, inverse = np.unique(ids, return_inverse=True)
    sums = np.zeros((len(unique), vectors.shape[1]), np.float64)
    np.add.at(sums, inverse, vectors)
    counts = np.bincount(inverse, minlength=len(unique))[:, None]
    return unique.tolist(), (sums / counts).astype(np.float32)


def pair_up(vision_ids: list[int], vision: np.ndarray, audio_ids: list[int], audio: np.ndarray
            ) -> tuple[list[int], np.ndarray, np.ndarray]:
    """The clips that have both senses, with their two vectors row-aligned."""
    where_audio = {c: i for i, c in enumerate(audio_ids)}
    both = [(c, i, where_audio[c]) for i, c in enumerate(vision_ids) if c in where_audio]
    ids = [c for c, _, _ in both]
    return ids, vision[[i for _, i, _ in both]], audio[[j for _, _, j in both]]


def run(night: Night) -> dict:
    """Train the alignment heads on tonight's pairs and write the ``shared`` space.

    Returns:
        counts, versions, resume, and ``metrics``: held-out retrieval in both directions
        (recall@1/5/10, median rank, each with chance) and the training curve.
    """
    from memory.store import EmbeddingRow, latest_version, write_embeddings

    cfg, day, paths, device = night.cfg.models.align, night.day, night.paths, night.device
    fraction, seed = night.cfg.models.heldout_fraction, night_seed(night)
    vision_version = latest_version(night.engine, "vision")
    audio_version = tonight_version(night, "audio")
    if vision_version is None:
        return {"note": "no vision vectors yet"}
    vision_ids, vision = load_space(night, "vision", vision_version)
    audio_ids, audio = load_space(night, "audio", audio_version)
    ids, v, a = pair_up(vision_ids, vision, audio_ids, audio)
    heldout = heldout_mask(ids, fraction, seed)
    result: dict = {"vision_version": vision_version, "audio_version": audio_version,
                    "vision_clips": len(vision_ids), "audio_clips": len(audio_ids), "pairs": len(ids),
                    "heldout_pairs": int(heldout.sum())}
    if (~heldout).sum() < 2:
        log.warning("align: %d clip(s) with both sight and sound outside the held-out set; need 2",
                    int((~heldout).sum()))
        return {**result, "note": "fewer than two clips with both vision and audio to train on"}

    sizes = {"vision_dim": int(v.shape[1]), "audio_dim": int(a.shape[1])}
    resume = resume_state(night, MODEL, {**sizes, "dim": cfg.dim, "hidden": cfg.hidden},
                          ("model", "optimizer", "step", "config"))
    trained = together(train_alignment, v[~heldout], a[~heldout], cfg, device, seed=seed, resume=resume.checkpoint)
    metrics: dict = {"train_loss_curve": [round(h["loss"], 5) for h in trained.history],
                     "logit_scale": trained.history[-1]["logit_scale"], "train_seconds": round(trained.seconds, 2)}
    if heldout.sum() >= 2:
        metrics.update(evaluate_alignment(trained.model, v[heldout], a[heldout], device))
    else:
        metrics["note"] = "fewer than two held-out pairs: retrieval not measured tonight"

    version = model_version(MODEL, day)
    save_night_checkpoint(night, MODEL, {
        "model": trained.model.state_dict(), "optimizer": trained.optimizer.state_dict(),
        "step": trained.step, "config": cfg.model_dump(), **sizes,
        "vision_version": vision_version, "audio_version": audio_version})
    shared_v = project(trained.model, vision, "vision", device)
    shared_a = project(trained.model, audio, "audio", device)
    rows = ([EmbeddingRow(clip_id=c, modality="vision") for c in vision_ids]
            + [EmbeddingRow(clip_id=c, modality="audio") for c in audio_ids])
    write_embeddings(night.engine, paths, space=SPACE, model_version=version, date=day, rows=rows,
                     vectors=np.concatenate([shared_v, shared_a]))
    log.info("align: wrote %d vision and %d audio vectors to space %r as %s",
             len(vision_ids), len(audio_ids), SPACE, version)
    return {**result, "model_version": version, **resume.as_result(), "steps": trained.steps,
            "metrics": metrics}


# --- query side ------------------------------------------------------------
def load_latest_align(paths: Paths, device: str, version: str | None = None) -> tuple[str, AlignModel]:
    """A night's alignment heads: the newest, or those that wrote ``version``.

    Raises:
        UsageError: no night has trained the alignment yet under this root, or that
            version's checkpoint is gone.
    """
    latest = version_checkpoint(paths, "align", version)
    checkpoint = load_checkpoint(latest, ("model", "config", "vision_dim", "audio_dim"))
    model = AlignModel(checkpoint["vision_dim"], checkpoint["audio_dim"], AlignConfig(**checkpoint["config"]))
    model.load_state_dict(checkpoint["model"])
    return checkpoint.get("model_version", model_version(MODEL, latest.stem)), model.to(device).eval()


@torch.no_grad()
def to_shared(vector: np.ndarray, modality: str, cfg: SleepConfig, paths: Paths,
              device: str, version: str | None = None) -> tuple[str, np.ndarray]:
    """Project one sense's query vector into the ``shared`` space.

    Args:
        vector: ``(D,)`` from ``encode_image_file`` (``modality="vision"``) or
            ``encode_audio_file`` (``modality="audio"``).
        modality: which sense the vector came from.
        cfg: the validated config (unused beyond the interface; the heads carry their own).
        paths: the layout of the root whose checkpoints are used.
        device: ``cpu`` or ``cuda``.
    Returns:
        ``(model_version, vector)``: ``align@{date}`` and an L2-normalised ``(dim,)`` float32.
    Raises:
        UsageError: unknown modality, no checkpoint yet, or a vector of the wrong size.
    """
    if modality not in MODALITIES:
        raise UsageError(f"--modality {modality}: expected one of {', '.join(MODALITIES)}")
    version, model = load_latest_align(paths, device, version)
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    if vector.shape[0] != model.dims[modality]:
        raise UsageError(f"a {modality} vector of size {vector.shape[0]} does not fit the alignment heads "
                         f"of {version} (size {model.dims[modality]}); run a night to retrain them")
    return version, project(model, vector[None], modality, device)[0]
