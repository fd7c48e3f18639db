"""Stage ``dream``: train the dream decoder on tonight's frames, then dream.

The decoder learns to draw each of tonight's frames (at ``dream.image_size``) from its
vision embedding (space ``vision_frame``, tonight's ``jepa@{date}``), continuing last
night's weights when the shapes fit. Then it dreams, into ``reports/{date}/dreams/``:

- recalls: a damaged view of a frame (a small crop, a grey block, a blur) is embedded,
  completed by tonight's reconstructor (what ``query --fragment`` would use) and decoded:
  the moment as remembered from a glimpse, beside the frame and the glimpse;
- blends: the embeddings of two of tonight's clips, spherically interpolated half-way and
  decoded: a moment that never happened, beside the two it came from.

How well the drawings follow their embedding is measured: dreams of tonight's frame
embeddings are embedded again, and the share whose nearest clip is the frame's own is set
beside the same share for unconditional dreams (the null condition) and chance.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.atomic import atomic_dir
from dream.decoder import ARCH_KEYS, dream
from dream.train import train_decoder
from models.checkpoint import checkpoint_path
from models.reconstruct.fragments import degrade
from models.vision.embed import embed_frames, load_target_encoder
from models.vision.frames import decode_frames, square_frame
from stages import Night
from stages.common import (
    checkpoint_folder,
    model_of,
    model_version,
    resume_state,
    save_night_checkpoint,
    tonight_version,
)

log = logging.getLogger(__name__)

MODEL = model_of("dream")
EVAL_DREAMS = 32  # dreams of frame embeddings drawn to measure fidelity (and as many unconditional)
PANEL = 128  # pixels per picture in the saved strips


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation between unit vectors (rows): the blend stays on the sphere."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    omega = np.arccos(np.clip((a * b).sum(-1, keepdims=True), -1.0, 1.0))
    so = np.sin(omega)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(so > 1e-6, (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / so, (1 - t) * a + t * b)
    return (out / np.linalg.norm(out, axis=-1, keepdims=True)).astype(np.float32)


def _strip(images: list[torch.Tensor]) -> Image.Image:
    """Pictures ``(3, H, W)`` uint8 side by side, each scaled to ``PANEL`` pixels."""
    panels = [Image.fromarray(im.permute(1, 2, 0).cpu().numpy()).resize((PANEL, PANEL), Image.NEAREST)
              for im in images]
    strip = Image.new("RGB", (len(panels) * PANEL + (len(panels) - 1) * 4, PANEL), (255, 255, 255))
    for i, panel in enumerate(panels):
        strip.paste(panel, (i * (PANEL + 4), 0))
    return strip


def _shrink(image: torch.Tensor, size: int) -> torch.Tensor:
    """``(3, S, S)`` uint8 at the dreams' size, so the strips compare like with like."""
    return F.interpolate(image[None].float().cpu(), size=size, mode="area")[0].round().to(torch.uint8)


def _nearest_clip(encoder, images: torch.Tensor, clip_vectors: np.ndarray, bf16: bool) -> np.ndarray:
    """Row of ``clip_vectors`` nearest (cosine) to each image's embedding."""
    frames = square_frame(images, encoder.img_size)
    vectors = embed_frames(encoder, frames, batch_size=64, bf16=bf16)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors @ clip_vectors.T).argmax(axis=1)


def run(night: Night) -> dict:
    """Train tonight's decoder and dream; dreams land in ``reports/{date}/dreams/``.

    Returns:
        counts, the dreams (file, kind, caption), and ``metrics``: the loss curve and the
        fidelity of conditional against unconditional dreams.
    """
    from memory.media import day_frames, middle_frames
    from memory.store import load_vectors
    from stages.reconstruct import load_completer

    cfg, day, paths, device = night.cfg.dream, night.day, night.paths, night.device
    version = tonight_version(night, "vision")
    rows, vectors = load_vectors(night.engine, paths, space="vision_frame", model_version=version, date=day)
    if len(rows) < 2:
        return {"trained": False, "note": "no vision model trained tonight (or fewer than two frames)"}
    with night.Session() as session:
        path_of = {f.frame_id: f.path for f in day_frames(session, day)}
    rng = np.random.default_rng([cfg.seed, 0xD4EA])
    pick = np.arange(len(rows)) if len(rows) <= cfg.max_frames else np.sort(
        rng.choice(len(rows), cfg.max_frames, replace=False))
    cache = decode_frames([paths.root / path_of[rows[i].frame_id] for i in pick], cfg.image_size, device)
    if len(cache.index) < 2:
        return {"trained": False, "note": "fewer than two frames could be read"}
    chosen = pick[cache.index]
    cond = vectors[chosen]
    frame_clips = np.array([rows[i].clip_id for i in chosen])

    config = cfg.model_dump(mode="json")
    resume = resume_state(night, MODEL, {"cond_dim": int(cond.shape[1]), **{k: config[k] for k in ARCH_KEYS}},
                          ("model", "optimizer", "step", "config", "cond_dim"))
    trained = train_decoder(cache.images, cond, cfg, device, resume=resume.checkpoint)
    save_night_checkpoint(night, MODEL, {
        "model": trained.model.state_dict(), "optimizer": trained.optimizer.state_dict(), "step": trained.step,
        "config": config, "cond_dim": int(cond.shape[1]), "input_version": version})

    decoder = trained.model
    encoder = load_target_encoder(checkpoint_path(checkpoint_folder(paths, "vision"), night.date),
                                  night.cfg.models.jepa, device)
    clip_rows, clip_vectors = load_vectors(night.engine, paths, space="vision", model_version=version, date=day)
    clip_ids = np.array([r.clip_id for r in clip_rows])
    clip_vectors = clip_vectors / np.linalg.norm(clip_vectors, axis=1, keepdims=True)
    generator = torch.Generator().manual_seed(cfg.seed)

    def draw(embeddings: np.ndarray | None, n: int | None = None) -> torch.Tensor:
        cond_t = None if embeddings is None else torch.as_tensor(embeddings, device=device)
        return dream(decoder, cond_t, steps=cfg.sample_steps, guidance=cfg.guidance, generator=generator, batch=n)

    # Fidelity: do dreams of a frame's embedding look (to the encoder) like the frame's clip?
    sample = np.sort(rng.choice(len(cond), min(EVAL_DREAMS, len(cond)), replace=False))
    row_of_clip = {int(c): i for i, c in enumerate(clip_ids)}
    own = np.array([row_of_clip[int(c)] for c in frame_clips[sample]])
    conditional = _nearest_clip(encoder, draw(cond[sample]), clip_vectors, night.cfg.models.jepa.bf16)
    unconditional = _nearest_clip(encoder, draw(None, len(sample)), clip_vectors, night.cfg.models.jepa.bf16)
    metrics = {
        "fidelity": round(float((conditional == own).mean()), 4),
        "fidelity_unconditional": round(float((unconditional == own).mean()), 4),
        "fidelity_chance": round(1 / len(clip_ids), 4), "fidelity_dreams": int(len(sample)),
        "loss_curve": trained.losses, "train_seconds": round(trained.seconds, 2),
        "images_per_second": round(trained.images_per_second, 1), "steps": trained.steps,
        "budget_cut": trained.budget_cut,
        "global_step": trained.step,
    }

    dreams: list[dict] = []
    strips: list[Image.Image] = []
    n_recall = cfg.dreams // 2
    recall_from = "fragment as it is (no reconstructor tonight)"
    reconstructor = checkpoint_path(checkpoint_folder(paths, "reconstruct"), night.date)
    completer = None
    if n_recall and reconstructor.exists():
        recall_from, completer = load_completer(reconstructor, night.engine, paths, version,
                                                night.cfg.models.reconstruct.use, device)
    if n_recall:
        rows_r = np.sort(rng.choice(len(cond), min(n_recall, len(cond)), replace=False))
        originals = decode_frames([paths.root / path_of[rows[chosen[i]].frame_id] for i in rows_r],
                                  encoder.img_size, device, progress=False).images
        views, kinds = degrade(originals.to(device), night.cfg.models.reconstruct.crop_scale, generator)
        fragments = embed_frames(encoder, views, batch_size=64, bf16=night.cfg.models.jepa.bf16)
        completed = completer(fragments) if completer else fragments
        drawn = draw(completed)
        for j, i in enumerate(rows_r):
            strips.append(_strip([_shrink(originals[j], cfg.image_size), _shrink(views[j], cfg.image_size),
                                  drawn[j].cpu()]))
            dreams.append({"kind": "recall", "clip_id": int(frame_clips[i]),
                           "caption": f"clip {int(frame_clips[i])}: the frame, a glimpse of it ({kinds[j]}), and "
                                      f"the dream of it completed by {recall_from}"})
    n_blend = cfg.dreams - n_recall
    if n_blend and len(clip_ids) >= 2:
        pairs = [tuple(rng.choice(len(clip_ids), 2, replace=False)) for _ in range(n_blend)]
        blends = slerp(clip_vectors[[a for a, _ in pairs]], clip_vectors[[b for _, b in pairs]], 0.5)
        drawn = draw(blends)
        ends = sorted({int(clip_ids[k]) for pair in pairs for k in pair})
        with night.Session() as session:
            middles = middle_frames(session, ends)
        pictures = decode_frames([paths.root / middles[c] for c in ends], cfg.image_size, device, progress=False)
        picture_of = {ends[i]: pictures.images[n] for n, i in enumerate(pictures.index)}
        for j, (a, b) in enumerate(pairs):
            strips.append(_strip([picture_of[int(clip_ids[a])], drawn[j].cpu(), picture_of[int(clip_ids[b])]]))
            dreams.append({"kind": "blend", "clip_ids": [int(clip_ids[a]), int(clip_ids[b])],
                           "caption": f"clips {int(clip_ids[a])} and {int(clip_ids[b])}, and the dream half-way "
                                      "between them"})
    with atomic_dir(paths.report(night.date) / "dreams") as folder:
        for k, (strip, item) in enumerate(zip(strips, dreams)):
            name = f"{item['kind']}-{k + 1:02d}.png"
            strip.save(folder / name)
            item["file"] = f"dreams/{name}"
    log.info("dream: %d dreams; fidelity %.2f (unconditional %.2f, chance %.2f)", len(dreams),
             metrics["fidelity"], metrics["fidelity_unconditional"], metrics["fidelity_chance"])
    return {"trained": True, "model_version": model_version(MODEL, day), "frames": int(len(cond)),
            **resume.as_result(), "recall_from": recall_from,
            "dreams": dreams, "metrics": metrics}
