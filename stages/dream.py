"""Stage ``dream``: train the dream decoder on tonight's frames and earlier days', then dream.

The decoder learns to draw frames (at ``dream.image_size``) from their vision embedding:
tonight's frames with their vectors in space ``vision_frame`` (tonight's ``jepa@{date}``),
and a replay of earlier days' frames, ``dream.replay_fraction`` of what it trains on, the
same number from every day (``stages.common.replay_frame_files``, as the vision stage
replays). Earlier days' stored vectors come from earlier vision models, whose space
tonight's decoder does not speak, so the replayed frames are embedded again with tonight's
encoder. It continues last night's weights (and their EMA) when the shapes fit. Then it
dreams, with the EMA weights, into ``reports/{date}/dreams/``:

- recalls: a damaged view of a frame (a small crop, a grey block, a blur) is embedded,
  completed by tonight's reconstructor (what ``query --fragment`` would use) and decoded:
  the moment as remembered from a glimpse, beside the glimpse and the frame;
- blends: the embeddings of two of tonight's clips, spherically interpolated half-way and
  decoded: a moment that never happened, beside the two it came from.

The round trip measures whether a dream shows its moment: ``EVAL_DREAMS`` recalls are
embedded again with tonight's encoder and their source clip ranked among tonight's clips;
the shares at rank 1 and in the top 5 are set beside the same decoder untrained (same
architecture, a fresh init, the same glimpses, starting noise and sampling) and chance.
The recalls shown in the report are some of those.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.atomic import atomic_dir
from dream.decoder import ARCH_KEYS, CONDITIONING, OLD_CONDITIONING, DreamDecoder, dream
from dream.train import train_decoder
from models.checkpoint import checkpoint_path
from models.reconstruct.fragments import degrade
from models.together import together
from models.vision.embed import embed_fragments, embed_frames, load_target_encoder
from models.vision.frames import decode_frames, square_frame
from stages import Night
from stages.common import (
    Resume,
    checkpoint_folder,
    model_of,
    model_version,
    night_seed,
    replay_frame_files,
    resume_state,
    save_night_checkpoint,
    tonight_version,
)

log = logging.getLogger(__name__)

MODEL = model_of("dream")
EVAL_DREAMS = 32  # recalls drawn to measure the round trip (by the trained and the untrained decoder)
PANEL = 128  # pixels a side of each picture saved for the report
REPLAY_CHUNK = 1024  # earlier frames decoded and embedded at once (bounds the memory it takes)


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation between unit vectors (rows): the blend stays on the sphere."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    omega = np.arccos(np.clip((a * b).sum(-1, keepdims=True), -1.0, 1.0))
    so = np.sin(omega)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(so > 1e-6, (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / so, (1 - t) * a + t * b)
    return (out / np.linalg.norm(out, axis=-1, keepdims=True)).astype(np.float32)


def clip_ranks(vectors: np.ndarray, clip_vectors: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Rank (0 = nearest by cosine) of each vector's own clip among ``clip_vectors``.

    Args:
        vectors: ``(N, D)`` embeddings of the dreams.
        clip_vectors: ``(C, D)`` unit clip embeddings.
        own: ``(N,)`` row of each dream's source clip in ``clip_vectors``.
    """
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = vectors @ clip_vectors.T  # (N, C)
    return (sims > sims[np.arange(len(own)), own][:, None]).sum(axis=1)


def resume_decoder(night: Night, cond_dim: int) -> Resume:
    """Whether tonight's decoder continues last night's: not when its shape or its way of
    conditioning changed (a checkpoint that does not record the latter predates it)."""
    config = night.cfg.dream.model_dump(mode="json")
    architecture = {"cond_dim": cond_dim, "conditioning": CONDITIONING, **{k: config[k] for k in ARCH_KEYS}}
    return resume_state(night, MODEL, architecture, ("model", "optimizer", "step", "config", "cond_dim"),
                        defaults={"conditioning": OLD_CONDITIONING})


def _panel(image: torch.Tensor) -> Image.Image:
    """``(3, H, W)`` uint8 at :data:`PANEL` pixels (nearest: a 16-pixel dream stays sharp-edged)."""
    return Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).resize((PANEL, PANEL), Image.NEAREST)


def _source(paths, moment: dict, name: str, pictures: dict[str, Image.Image]) -> dict:
    """A dream's source moment: its frame as a thumbnail, queued in ``pictures`` as
    ``{name}.jpg``, and where and when it was (for the report's caption)."""
    with paths.vault.open(paths.root / moment["path"]) as stored, Image.open(stored) as frame:
        picture = frame.convert("RGB")
        picture.thumbnail((PANEL * 2, PANEL))
    pictures[f"{name}.jpg"] = picture
    return {"file": f"dreams/{name}.jpg", **{k: moment[k] for k in ("clip_id", "wall", "recording", "offset_s")}}


def write_dream_folder(paths, final: Path, pictures: dict[str, Image.Image],
                       texts: dict[str, str] | None = None) -> None:
    """Write ``pictures`` (file name -> picture; ``.jpg`` at quality 80, else PNG) and ``texts``
    (file name -> text) as the folder ``final``, whole or not at all.

    Each file is sealed when the memory is, under its final name: the folder is written under
    a temporary name and then renamed into place.
    """
    vault = paths.vault
    with atomic_dir(final) as folder:
        for name, picture in pictures.items():
            options = {"quality": 80} if name.endswith(".jpg") else {}
            if not vault.sealing:
                picture.save(folder / name, **options)
                continue
            with vault.writer(folder / name, name_as=final / name) as fh:
                picture.save(fh, format="JPEG" if name.endswith(".jpg") else "PNG", **options)
        for name, text in (texts or {}).items():
            if vault.sealing:
                vault.write_bytes(folder / name, text.encode("utf-8"), name_as=final / name)
            else:
                (folder / name).write_text(text)


def _replay(night: Night, encoder, count: int) -> tuple[torch.Tensor | None, np.ndarray | None, dict]:
    """Earlier days' frames at the decoder's size, embedded with tonight's encoder.

    Returns:
        ``(images, vectors, about)``: ``(R, 3, S, S)`` uint8 and ``(R, D)``, both ``None``
        when nothing is replayed; ``about`` holds the days and frames per day.
    """
    cfg, jepa = night.cfg.dream, night.cfg.models.jepa
    # Seeded by the night: each night replays other frames of a day, the same ones when rerun.
    files, days, counts = replay_frame_files(night, count, night_seed(night))
    images, vectors, per_day = [], [], Counter()
    for start in range(0, len(files), REPLAY_CHUNK):
        part = decode_frames([night.paths.root / f for f in files[start:start + REPLAY_CHUNK]], encoder.img_size,
                             night.device, progress=False)
        if not part.index:
            continue
        vectors.append(embed_frames(encoder, part.images, batch_size=jepa.embed_batch_size, bf16=jepa.bf16))
        images.append(square_frame(part.images, cfg.image_size))
        per_day.update(days[start + i] for i in part.index)
    about = {"frames": sum(per_day.values()), "days": sorted(per_day), "per_day": dict(sorted(per_day.items())),
             **counts}
    if not images:
        return None, None, about
    return torch.cat(images), np.concatenate(vectors), about


def run(night: Night) -> dict:
    """Train tonight's decoder and dream; dreams land in ``reports/{date}/dreams/``.

    Returns:
        counts, the replay, the dreams (file, kind, caption, the moments they came from) and
        ``metrics``: the loss curve and the round trip (``roundtrip_top1``/``_top5`` of the
        trained decoder, ``untrained_top1``/``_top5``, ``chance_top1``/``_top5``).
    """
    from memory.media import day_frames, frame_moments
    from memory.store import load_vectors
    from stages.reconstruct import fragment_grid_of, load_completer, read_reconstructors

    cfg, day, paths, device = night.cfg.dream, night.day, night.paths, night.device
    if cfg.backend == "unclip":
        return run_unclip(night)
    jepa = night.cfg.models.jepa
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
    encoder = load_target_encoder(checkpoint_path(checkpoint_folder(paths, "vision"), night.date), jepa, device)

    # Replay: f of the frames trained on come from earlier days, so f / (1 - f) per frame of tonight.
    wanted = min(cfg.max_frames, round(len(cond) * cfg.replay_fraction / (1 - cfg.replay_fraction)))
    replay_images, replay_cond, replay = _replay(night, encoder, wanted)
    images, train_cond = cache.images, cond
    if replay_images is not None:
        images, train_cond = torch.cat([images, replay_images]), np.concatenate([cond, replay_cond])
    log.info("dream: %d frames of tonight, %d replayed from %d earlier day(s)", len(cond), replay["frames"],
             len(replay["days"]))

    config = cfg.model_dump(mode="json")
    resume = resume_decoder(night, int(cond.shape[1]))
    trained = together(train_decoder, images, train_cond, cfg, device, resume=resume.checkpoint)
    save_night_checkpoint(night, MODEL, {**trained.state(), "config": config, "cond_dim": int(cond.shape[1]),
                                         "conditioning": CONDITIONING, "input_version": version})
    decoder = trained.dreamer()
    with torch.random.fork_rng(devices=[]):  # the baseline's init leaves the night's RNG alone
        torch.manual_seed(cfg.seed + 1)
        untrained = DreamDecoder(int(cond.shape[1]), cfg).to(device).eval()

    clip_rows, clip_vectors = load_vectors(night.engine, paths, space="vision", model_version=version, date=day)
    clip_ids = np.array([r.clip_id for r in clip_rows])
    clip_vectors = clip_vectors / np.linalg.norm(clip_vectors, axis=1, keepdims=True)

    def draw(model: DreamDecoder, embeddings: np.ndarray) -> torch.Tensor:
        # A fresh generator per call: the trained and untrained decoders start from the same noise.
        return dream(model, torch.as_tensor(embeddings, device=device), steps=cfg.sample_steps,
                     guidance=cfg.guidance, generator=torch.Generator().manual_seed(cfg.seed),
                     cond_noise=cfg.sample_cond_noise)

    def reencode(pictures: torch.Tensor) -> np.ndarray:
        return embed_frames(encoder, square_frame(pictures, encoder.img_size), batch_size=64, bf16=jepa.bf16)

    # Recalls, and the round trip measured on them.
    recall_from = "fragment as it is (no reconstructor tonight)"
    reconstructor = checkpoint_path(checkpoint_folder(paths, "reconstruct"), night.date)
    completer, grid = None, 0
    if reconstructor.exists():
        state = read_reconstructors(reconstructor)
        recall_from, completer = load_completer(reconstructor, night.engine, paths, version,
                                                night.cfg.models.reconstruct.use, device, state)
        grid = fragment_grid_of(state)
    sample = np.sort(rng.choice(len(cond), min(EVAL_DREAMS, len(cond)), replace=False))
    originals = decode_frames([paths.root / path_of[rows[chosen[i]].frame_id] for i in sample],
                              encoder.img_size, device, progress=False).images
    views, kinds = degrade(originals.to(device), night.cfg.models.reconstruct.crop_scale,
                           torch.Generator().manual_seed(cfg.seed))
    fragments = embed_fragments(encoder, views, grid=grid, batch_size=64, bf16=jepa.bf16)
    completed = completer(fragments) if completer else fragments
    recalls = draw(decoder, completed)
    row_of_clip = {int(c): i for i, c in enumerate(clip_ids)}
    own = np.array([row_of_clip[int(c)] for c in frame_clips[sample]])
    ranks = clip_ranks(reencode(recalls), clip_vectors, own)
    baseline = clip_ranks(reencode(draw(untrained, completed)), clip_vectors, own)
    n_clips = len(clip_ids)
    metrics = {
        "roundtrip_top1": round(float((ranks < 1).mean()), 4), "roundtrip_top5": round(float((ranks < 5).mean()), 4),
        "untrained_top1": round(float((baseline < 1).mean()), 4),
        "untrained_top5": round(float((baseline < 5).mean()), 4),
        "chance_top1": round(1 / n_clips, 4), "chance_top5": round(min(5, n_clips) / n_clips, 4),
        "roundtrip_dreams": len(sample), "roundtrip_clips": int(n_clips),
        "loss_curve": trained.losses, "train_seconds": round(trained.seconds, 2),
        "images_per_second": round(trained.images_per_second, 1), "steps": trained.steps,
        "budget_cut": trained.budget_cut, "global_step": trained.step,
    }

    # What the report shows: each dream, the pictures it came from, and when they were taken.
    pictures: dict[str, Image.Image] = {}
    dreams: list[dict] = []
    n_recall = min(cfg.dreams // 2, len(sample))
    shown = np.sort(rng.choice(len(sample), n_recall, replace=False))
    frame_ids = [rows[chosen[sample[j]]].frame_id for j in shown]
    n_blend = cfg.dreams - n_recall if n_clips >= 2 else 0
    pairs = [tuple(rng.choice(n_clips, 2, replace=False)) for _ in range(n_blend)]
    # A blend's moments: the middle one of each clip's frames tonight.
    frames_of: dict[int, list[int]] = {}
    for row in rows:
        frames_of.setdefault(int(row.clip_id), []).append(row.frame_id)
    middle = {c: ids[len(ids) // 2] for c, ids in frames_of.items()}
    with night.Session() as session:
        moments = frame_moments(session, frame_ids + [middle[int(clip_ids[k])] for pair in pairs for k in pair])

    def source(name: str, frame_id: int) -> dict:
        return _source(paths, moments[frame_id], name, pictures)

    for k, (j, frame_id) in enumerate(zip(shown, frame_ids)):
        name = f"recall-{k + 1:02d}"
        pictures[f"{name}.png"], pictures[f"{name}-glimpse.png"] = _panel(recalls[j]), _panel(views[j])
        clip = int(frame_clips[sample[j]])
        dreams.append({"kind": "recall", "clip_id": clip, "file": f"dreams/{name}.png",
                       "glimpse": f"dreams/{name}-glimpse.png", "damage": kinds[j], "rank": int(ranks[j]) + 1,
                       "sources": [source(f"{name}-frame", frame_id)],
                       "caption": f"clip {clip}: a glimpse of a frame ({kinds[j]}), completed by {recall_from} and "
                                  f"dreamt; re-embedded, the dream ranks its clip {int(ranks[j]) + 1} of {n_clips}"})
    if pairs:
        blends = draw(decoder, slerp(clip_vectors[[a for a, _ in pairs]], clip_vectors[[b for _, b in pairs]], 0.5))
        for k, (a, b) in enumerate(pairs):
            name, ends = f"blend-{k + 1:02d}", (int(clip_ids[a]), int(clip_ids[b]))
            pictures[f"{name}.png"] = _panel(blends[k])
            dreams.append({"kind": "blend", "clip_ids": list(ends), "file": f"dreams/{name}.png",
                           "sources": [source(f"{name}-{e}", middle[c]) for e, c in zip("ab", ends)],
                           "caption": f"clips {ends[0]} and {ends[1]}, and the dream half-way between them"})
    write_dream_folder(paths, paths.report(night.date) / "dreams", pictures)
    log.info("dream: %d dreams; round trip top-1 %.2f, top-5 %.2f (untrained %.2f, %.2f; chance %.2f, %.2f)",
             len(dreams), metrics["roundtrip_top1"], metrics["roundtrip_top5"], metrics["untrained_top1"],
             metrics["untrained_top5"], metrics["chance_top1"], metrics["chance_top5"])
    return {"trained": True, "model_version": model_version(MODEL, day), "frames": len(cond),
            "replay_frames": replay["frames"], "replay": replay, **resume.as_result(), "recall_from": recall_from,
            "dreams": dreams, "metrics": metrics}


def run_unclip(night: Night) -> dict:
    """``dream.backend: unclip``: Stable unCLIP draws tonight's dreams from the ``openclip``
    stage's vectors; our decoder is not trained. Dreams of single clips (their OpenCLIP
    vector as stored: no reconstructor works in that space) and blends of two, saved and
    shown as the decoder's are. The round trip is not measured for this backend yet.
    """
    from dream.unclip import decode_embeddings, load_unclip
    from memory.media import frame_moments
    from memory.store import load_vectors
    from models.openclip import WeightsError, weights_version

    cfg, day, paths = night.cfg.dream, night.day, night.paths
    try:
        version = weights_version(night.cfg.models.openclip)
    except WeightsError as exc:
        return {"trained": False, "backend": "unclip",
                "note": f"dream.backend unclip draws from OpenCLIP vectors, and there are none: {exc}"}
    rows, vectors = load_vectors(night.engine, paths, space="openclip", model_version=version, date=day)
    frame_rows, _ = load_vectors(night.engine, paths, space="openclip_frame", model_version=version, date=day)
    if len(rows) < 1:
        return {"trained": False, "backend": "unclip", "note": f"no {version} vectors tonight (stage openclip)"}
    dreamer = load_unclip(cfg.unclip, night.device, embed_dim=vectors.shape[1])
    rng = np.random.default_rng([cfg.seed, 0xD4EA])
    n_single = min(max(cfg.dreams // 2, 1), len(rows))
    singles = np.sort(rng.choice(len(rows), n_single, replace=False))
    pairs = [tuple(rng.choice(len(rows), 2, replace=False)) for _ in range(cfg.dreams - n_single)] if len(rows) >= 2 else []
    embeddings = [vectors[singles]]
    if pairs:
        embeddings.append(slerp(vectors[[a for a, _ in pairs]], vectors[[b for _, b in pairs]], 0.5))
    drawn = decode_embeddings(dreamer, np.concatenate(embeddings), generator=torch.Generator().manual_seed(cfg.seed))
    frames_of: dict[int, list[int]] = {}
    for row in frame_rows:
        frames_of.setdefault(int(row.clip_id), []).append(row.frame_id)
    middle = {c: ids[len(ids) // 2] for c, ids in frames_of.items()}
    clip_ids = [int(r.clip_id) for r in rows]
    with night.Session() as session:
        moments = frame_moments(session, [middle[c] for c in clip_ids if c in middle])
    pictures: dict[str, Image.Image] = {}

    def sources(name: str, clips: list[int]) -> list[dict]:
        return [_source(paths, moments[middle[clip]], f"{name}-{end}", pictures)
                for end, clip in zip("ab", clips) if middle.get(clip) in moments]

    dreams = []
    for k, i in enumerate(singles):
        name = f"memory-{k + 1:02d}"
        pictures[f"{name}.png"] = _panel(drawn[k])
        dreams.append({"kind": "memory", "clip_id": clip_ids[i], "file": f"dreams/{name}.png",
                       "sources": sources(name, [clip_ids[i]]),
                       "caption": f"clip {clip_ids[i]}, drawn by Stable unCLIP from its OpenCLIP embedding"})
    for k, (a, b) in enumerate(pairs):
        name = f"blend-{k + 1:02d}"
        pictures[f"{name}.png"] = _panel(drawn[len(singles) + k])
        ends = [clip_ids[a], clip_ids[b]]
        dreams.append({"kind": "blend", "clip_ids": ends, "file": f"dreams/{name}.png",
                       "sources": sources(name, ends),
                       "caption": f"clips {ends[0]} and {ends[1]}, and the dream half-way between them (Stable unCLIP)"})
    write_dream_folder(paths, paths.report(night.date) / "dreams", pictures)
    log.info("dream: %d dreams by %s from %s", len(dreams), dreamer.name, version)
    return {"trained": False, "backend": "unclip", "decoder": dreamer.name, "input_version": version,
            "note": f"dreams drawn by {dreamer.name} (dream.backend: unclip); our decoder was not trained tonight",
            "dreams": dreams, "metrics": {"dreams": len(dreams)}}
