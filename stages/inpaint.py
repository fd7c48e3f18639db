"""Stage ``inpaint``: feature-space completion of fragments, and memories stored compressed.

The seed's DINOv2 experiment, every night on our own vision encoder (issue #16):

1. **Inpainting masked patch tokens.** A :class:`~models.vision.inpaint.PatchInpainter`
   (``models.inpaint``) trains on tonight's frames outside the held-out set, against
   tonight's frozen vision encoder, continuing last night's weights when the shapes still
   fit. On each held-out frame, ``models.inpaint.views`` fragments keep a contiguous block of
   ``keep_share`` of the patches (a 25 % block: a crop-like quarter); the encoder sees only
   those patches. Each fragment searches tonight's clip vectors (space ``vision``, cosine)
   three ways: (a) the mean of its visible tokens, (b) the mean of the inpainted full grid,
   (c) the clean frame, the upper bound. Reported: R@1 and R@5 of the frame's own clip, the
   cosine to the clean frame's embedding, chance, and (b)'s R@1 over (a)'s.
2. **Memories stored compressed.** Tonight's clip (``vision``) and frame (``vision_frame``)
   vectors compressed by PCA to each of ``models.inpaint.pca_dims``: the share of each
   vector's ``knn_k`` nearest neighbours kept (:func:`models.retrieval.pca_knn_agreement`).

The inpainter trains on rank 0 alone under ``--gpus N`` (it is small; the other ranks wait).
Nothing is written to the memory store; the checkpoint is ``checkpoints/inpaint/{date}.pt``.
``bench/feature_completion.py`` runs :func:`measure` on any night, with its own step count.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from memory.media import day_frames
from memory.store import load_vectors
from models.checkpoint import checkpoint_path
from models.retrieval import own_clip_recall, pca_knn_agreement
from models.vision.embed import embed_frames, load_target_encoder
from models.vision.frames import decode_frames
from models.vision.inpaint import random_patch_mask
from models.vision.inpaint_train import encode_tokens, train_inpainter
from stages import Night
from stages.common import (
    checkpoint_folder,
    heldout_mask,
    model_of,
    model_version,
    night_seed,
    resume_state,
    save_night_checkpoint,
    tonight_version,
)
from stages.vision import downsample

log = logging.getLogger(__name__)

MODEL = model_of("inpaint")
EVAL_SALT = 0x1F16  # the held-out fragments' masks: another stream than training's


class NothingToMeasure(ValueError):
    """The night cannot be measured (no vision vectors, or no frame to train or measure on)."""


def measure(night: Night, *, encoder=None, steps: int | None = None, views: int | None = None,
            max_vectors: int = 20000, init: dict | None = None, progress: bool = False
            ) -> tuple[dict, torch.nn.Module]:
    """Train the inpainter on tonight's training frames and measure both figures (module docstring).

    Args:
        encoder: tonight's vision target encoder (``None``: loaded from its checkpoint).
        steps: inpainter steps (default ``models.inpaint.steps``).
        views: fragments (mask draws) per held-out frame (default ``models.inpaint.views``).
        max_vectors: vectors per space the PCA figure is measured on at most (a seeded sample).
        init: weights to continue from.
    Returns:
        ``(figures, inpainter)``.
    Raises:
        NothingToMeasure: no vision vectors tonight, or no frame to train or to measure on.
    """
    cfg, icfg, paths, device = night.cfg, night.cfg.models.inpaint, night.paths, night.device
    views = icfg.views if views is None else views
    seed = night_seed(night)
    version = tonight_version(night, "vision")
    rows, clips = load_vectors(night.engine, paths, space="vision", model_version=version, date=night.day)
    if not rows:
        raise NothingToMeasure(f"no {version} clip vectors for {night.day}; run stage vision first")
    row_of_clip = {r.clip_id: i for i, r in enumerate(rows)}
    with night.Session() as session:
        frames = [f for f in day_frames(session, night.day) if f.clip_id in row_of_clip]
    held = heldout_mask([f.frame_id for f in frames], cfg.models.heldout_fraction, seed)
    if held.all() or not held.any():
        raise NothingToMeasure(f"{len(frames)} frames, {int(held.sum())} held out: nothing to train or to measure "
                               "on (see models.heldout_fraction)")
    jepa = cfg.models.jepa
    if encoder is None:
        encoder = load_target_encoder(checkpoint_path(checkpoint_folder(paths, "vision"), night.date), jepa, device)
    cache = decode_frames([paths.root / f.path for f in frames], encoder.img_size, device, progress=False)
    is_held = held[cache.index]
    if is_held.all() or not is_held.any():
        raise NothingToMeasure(f"{len(cache.index)} readable frames, {int(is_held.sum())} held out: nothing to train "
                               "or to measure on")

    started = time.perf_counter()
    model, history = train_inpainter(encoder, cache.images[~is_held], icfg, device, steps=steps, seed=seed,
                                     init=init, progress=progress)
    train_seconds = time.perf_counter() - started

    images = cache.images[is_held]
    targets = np.array([row_of_clip[frames[i].clip_id] for i, h in zip(cache.index, is_held) if h])
    clean = embed_frames(encoder, images, batch_size=jepa.embed_batch_size, bf16=jepa.bf16)
    generator = torch.Generator().manual_seed(seed ^ EVAL_SALT)
    visible_means, inpainted_means = [], []
    with torch.no_grad():
        for _ in range(views):
            keep = random_patch_mask(len(images), encoder.grid, icfg.keep_share, generator, block=True)
            for start in range(0, len(images), jepa.embed_batch_size):
                batch = images[start:start + jepa.embed_batch_size].to(device)
                idx = keep[start:start + jepa.embed_batch_size].to(device)
                visible = encode_tokens(encoder, batch, idx)  # (B, K, D)
                visible_means.append(visible.mean(1).cpu().numpy())
                inpainted_means.append(model.complete(visible, idx).mean(1).cpu().numpy())
    queries = {"visible": np.concatenate(visible_means), "inpainted": np.concatenate(inpainted_means),
               "clean": np.tile(clean, (views, 1))}
    query_targets, query_clean = np.tile(targets, views), np.tile(clean, (views, 1))
    found = {kind: own_clip_recall(q, clips, query_targets, query_clean) for kind, q in queries.items()}

    figures: dict = {
        # Headline first (the night's one-screen summary shows a stage's first scalar figures).
        "top1_inpainted": found["inpainted"]["top1"], "top1_visible": found["visible"]["top1"],
        "date": night.day, "vision_version": version, "clips": len(rows),
        "train_frames": int((~is_held).sum()), "heldout_frames": int(is_held.sum()), "views": views,
        "queries": len(query_targets), "patches": encoder.num_patches,
        "visible_patches": int(keep.shape[1]), "keep_share": icfg.keep_share,
        "chance_top1": round(1 / len(rows), 4), "chance_top5": round(min(5, len(rows)) / len(rows), 4),
        "steps": len(history), "loss_first": round(history[0], 4) if history else None,
        "loss_last": round(history[-1], 4) if history else None, "loss_curve": downsample(history),
        "train_seconds": round(train_seconds, 2), "recall": found,
        "ratio_top1": round(found["inpainted"]["top1"] / max(found["visible"]["top1"], 1e-12), 3),
    }
    rng = np.random.default_rng([seed, EVAL_SALT])
    figures["pca"] = {}
    for space in ("vision", "vision_frame"):
        _, vectors = load_vectors(night.engine, paths, space=space, model_version=version, date=night.day)
        if len(vectors) < 2:
            continue
        if len(vectors) > max_vectors:
            vectors = vectors[np.sort(rng.choice(len(vectors), max_vectors, replace=False))]
        started = time.perf_counter()
        figures["pca"][space] = pca_knn_agreement(vectors, icfg.pca_dims, icfg.knn_k)
        figures["pca"][space]["seconds"] = round(time.perf_counter() - started, 2)
    return figures, model


def run(night: Night) -> dict:
    """Train and measure tonight's inpainter; save it. A night that cannot be measured says why."""
    path = checkpoint_path(checkpoint_folder(night.paths, "vision"), night.date)
    if not path.is_file():
        return {"trained": False, "note": "no vision model trained tonight"}
    encoder = load_target_encoder(path, night.cfg.models.jepa, night.device)
    icfg = night.cfg.models.inpaint
    resume = resume_state(night, MODEL, {"num_patches": encoder.num_patches, "enc_dim": encoder.dim,
                                         "dim": icfg.dim, "depth": icfg.depth, "heads": icfg.heads}, ("model",))
    try:
        figures, model = measure(night, encoder=encoder, progress=True,
                                 init=None if resume.checkpoint is None else resume.checkpoint["model"])
    except NothingToMeasure as exc:
        return {"trained": False, "note": str(exc)}
    save_night_checkpoint(night, MODEL, {
        "model": model.state_dict(), "config": icfg.model_dump(mode="json"), "step": figures["steps"],
        "num_patches": encoder.num_patches, "enc_dim": encoder.dim, "input_version": figures["vision_version"]})
    log.info("inpaint: held-out 25%%-block fragments find their clip first %.2f from the visible tokens, %.2f "
             "from the inpainted grid (clean frame %.2f, chance %.2f)", figures["recall"]["visible"]["top1"],
             figures["recall"]["inpainted"]["top1"], figures["recall"]["clean"]["top1"], figures["chance_top1"])
    return {"trained": True, "model_version": model_version(MODEL, night.date), **resume.as_result(),
            "frames": figures["train_frames"] + figures["heldout_frames"], "metrics": figures}
