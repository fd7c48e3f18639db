"""Stage ``reconstruct``: learn to complete fragments of moments into whole clips.

Tonight's clip embeddings (space ``vision``, the vision stage's version) are the stored
patterns, with a replay of earlier days: ``replay_fraction`` of the frames fragments are
made of are earlier clips' kept keyframes, drawn evenly over the days, embedded with
tonight's encoder as ``reembed`` embeds them (so a replayed clip's pattern is its vector in
tonight's version), and their clips join the patterns. Up to ``max_frames`` of tonight's
frames (and the replayed keyframes) are damaged ``views_per_frame`` times each, more on a
small night (:func:`views_per_frame`; ``min_fragments``)
(:mod:`models.reconstruct.fragments`: a small crop, a grey block, a blur) and described with
tonight's vision encoder (the mean embedding and a ``fragment_grid`` layout of its tokens,
:func:`models.vision.embed.embed_fragments`); the MLP and the Hopfield reconstructor learn to map those
fragment embeddings to their clip's embedding, on the frames outside the held-out set
(continuing last night's weights when the shapes still fit), and are measured on the
held-out frames' fragments beside the fragments left as they are (held out by frame, not
by clip: every clip is a memory to recall, and a query brings a new glimpse of one). The checkpoint records
which clips of which (version, date) form the bank, so ``query --fragment`` recalls from
the same memories. Nothing is written to the memory store.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.config import ReconstructConfig, SleepConfig
from core.errors import UsageError
from core.paths import Paths
from memory.keepsakes import day_keepsakes, keepsake_days
from models.batches import replay_by_day
from models.checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint
from models.reconstruct.fragments import degrade
from models.reconstruct.networks import build, fragment_width
from models.reconstruct.train import (
    VARIANTS,
    bank_rows,
    choose,
    completer,
    evaluate,
    train_reconstructors,
)
from models.together import together
from models.vision.embed import embed_fragments, embed_frames, load_target_encoder
from models.vision.frames import FrameCache, decode_frames
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
    train_and_measure,
)
from stages.vision import encode_image_file

log = logging.getLogger(__name__)

MODEL = model_of("reconstruct")
SPACE = "vision"
# The networks' generation: 2 added the recall cross-entropy, the Hopfield MLP query and the
# pattern layer; 3 describes a fragment by its mean and a layout (fragment_grid). Weights of older generations (checkpoints that do not record it) do not load
# into these networks: a night starts them afresh, a query says to run a night.
NETWORKS = 3


def tonight_encoder(night: Night):
    """Tonight's vision target encoder, on the night's device."""
    return load_target_encoder(checkpoint_path(checkpoint_folder(night.paths, "vision"), night.date),
                               night.cfg.models.jepa, night.device)


MAX_VIEWS = 1024  # damaged views of one frame at most, however small the night


def views_per_frame(frames: int, cfg: ReconstructConfig) -> int:
    """Damaged views drawn of each of ``frames`` pictures: ``views_per_frame``, or on a small
    night enough for ``min_fragments`` in all (at most :data:`MAX_VIEWS`).

    Why: the networks learn to recall a night's moments from views of its frames. A few views
    of a few frames are learned by heart and fresh damage is not recalled (the demo day's 21
    frames with configs/cpu.yaml, 25 %-crop R@1 after the Hopfield network: 4 views a frame
    0.53, 196 views 0.84, 780 views 0.905; BENCHMARKS.md). A big night's frames already give
    that many.
    """
    if frames <= 0:
        return cfg.views_per_frame
    return max(cfg.views_per_frame, min(MAX_VIEWS, -(-cfg.min_fragments // frames)))


def fragment_embeddings(night: Night, encoder, cache: FrameCache, views: int, cfg, seed: int
                        ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Descriptions of ``views`` damaged views of each decoded frame (:func:`views_per_frame`),
    with ``encoder``: the mean embedding and a ``fragment_grid`` layout
    (:func:`models.vision.embed.embed_fragments`).

    Returns:
        ``(vectors (F, W), frame_positions (F,), kinds (F,))``: the position in the list
        ``cache`` was decoded from of each fragment's frame (``cache.index``: unreadable frames
        give none) and each one's kind of damage.
    """
    jepa = night.cfg.models.jepa
    generator = torch.Generator().manual_seed(seed)
    vectors, positions, kinds = [], [], []
    chunk = cfg.embed_batch_size
    for _ in range(views):
        for start in range(0, len(cache.index), chunk):
            images = cache.images[start:start + chunk].to(night.device)
            damaged, kind = degrade(images, cfg.crop_scale, generator, cfg.damage_mix)
            vectors.append(embed_fragments(encoder, damaged, grid=cfg.fragment_grid, batch_size=chunk, bf16=jepa.bf16))
            positions.extend(cache.index[start:start + chunk])
            kinds.extend(kind)
    width = fragment_width(encoder.dim, cfg.fragment_grid)
    return (np.concatenate(vectors) if vectors else np.zeros((0, width), np.float32)), np.asarray(positions), kinds


@dataclass
class Replay:
    """Earlier clips replayed tonight: one kept keyframe each, embedded with tonight's encoder."""

    clip_ids: list[int]
    paths: list[str]  # keyframes, relative to the root
    days: list[str]
    vectors: np.ndarray  # (N, D): each keyframe's clean embedding, its clip's pattern
    frames: FrameCache | None = None  # the keyframes decoded, ``index`` counting the clips above
    pool: int = 0  # earlier keyframes there were to draw from


def replay_keyframes(night: Night, encoder, count: int, seed: int) -> Replay:
    """Up to ``count`` earlier clips' kept keyframes, the same number from every earlier day
    (:func:`models.batches.replay_by_day`), with their clean embeddings by ``encoder``."""
    jepa = night.cfg.models.jepa
    root = night.paths.root
    with night.Session() as session:
        pools = {day: [(k.clip_id, k.keyframe) for k in day_keepsakes(session, day) if k.keyframe]
                 for day in keepsake_days(session) if day < night.day}
    pool = sum(len(items) for items in pools.values())
    drawn = replay_by_day({d: items for d, items in pools.items() if items}, count, seed) if count > 0 else {}
    chosen = [(clip, path, day) for day, items in sorted(drawn.items()) for clip, path in items
              if (root / path).is_file()]
    if not chosen:
        return Replay([], [], [], np.zeros((0, 0), np.float32), pool=pool)
    cache = decode_frames([root / path for _, path, _ in chosen], encoder.img_size, night.device, progress=False)
    vectors = embed_frames(encoder, cache.images, batch_size=jepa.embed_batch_size, bf16=jepa.bf16)
    kept = [chosen[i] for i in cache.index]  # unreadable keyframes are left out
    frames = FrameCache(cache.images, list(range(len(kept))))
    return Replay([c for c, _, _ in kept], [p for _, p, _ in kept], [d for _, _, d in kept], vectors, frames, pool)


def noisy_fragments(clean: np.ndarray, snrs_db: list[float], seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One copy of each clean frame embedding per SNR, with Gaussian noise added (the seed's
    corruption: a vague memory of the moment rather than a view of part of it).

    The signal is what tells a frame from the mean of tonight's frames (the shared part would
    make every SNR look high); the noise is drawn per dimension at ``signal power / 10^(snr/10)``.

    Returns:
        ``(vectors (len(snrs) * N, D), rows (into clean), kinds ("noise0dB", ...))``.
    """
    if not len(clean) or not snrs_db:
        return np.zeros((0, clean.shape[1]), np.float32), np.zeros(0, int), []
    unit = clean / np.linalg.norm(clean, axis=1, keepdims=True)
    power = float(((unit - unit.mean(axis=0)) ** 2).mean())
    rng = np.random.default_rng([seed, 0x5A1E])
    vectors, rows, kinds = [], [], []
    for snr in snrs_db:
        vectors.append(unit + rng.normal(0, np.sqrt(power / 10 ** (snr / 10)), unit.shape))
        rows.append(np.arange(len(unit)))
        kinds += [f"noise{snr:g}dB"] * len(unit)
    return np.concatenate(vectors).astype(np.float32), np.concatenate(rows), kinds


def without_layout(vectors: np.ndarray, width: int) -> np.ndarray:
    """Bare embeddings ``(N, D)`` as ``width``-wide fragment descriptions whose layout is missing
    (``NaN``: noise in embedding space has no picture to lay out)."""
    out = np.full((len(vectors), width), np.nan, dtype=np.float32)
    out[:, :vectors.shape[1]] = vectors
    return out


def metrics_by_kind(models: dict, bank: np.ndarray, fragments: np.ndarray, targets: np.ndarray, kinds: list[str],
                    device: str, top_k: int) -> dict:
    """:func:`evaluate` of every kind of damage on its own: ``{kind: {variant: {top1, top5}}}``."""
    kinds_arr = np.asarray(kinds)
    out = {}
    for kind in sorted(set(kinds)):
        rows = kinds_arr == kind
        m = evaluate(models, bank, fragments[rows], targets[rows], device, top_k)
        out[kind] = {"fragments": int(rows.sum()),
                     **{v: {"top1": m[v]["top1"], "top5": m[v]["top5"]} for v in ("fragment", *models)}}
    return out


def _by_origin(models: dict, bank: np.ndarray, fragments: np.ndarray, targets: np.ndarray, measured: np.ndarray,
               earlier: np.ndarray, device: str, top_k: int) -> dict:
    """:func:`evaluate` of the measured fragments of tonight's frames and of replayed earlier clips apart."""
    out = {}
    for origin, rows in (("tonight", measured & ~earlier), ("earlier days", measured & earlier)):
        if rows.any():
            m = evaluate(models, bank, fragments[rows], targets[rows], device, top_k)
            out[origin] = {"fragments": int(rows.sum()),
                           **{v: {"top1": m[v]["top1"], "top5": m[v]["top5"]} for v in ("fragment", *models)}}
    return out


def resume_reconstructors(night: Night, dim: int, cfg: ReconstructConfig):
    """Whether tonight continues last night's networks: not when a size or their generation
    (:data:`NETWORKS`) changed; the reason is logged and reported."""
    return resume_state(night, MODEL, {"dim": dim, "hidden": cfg.hidden, "assoc_dim": cfg.assoc_dim,
                                       "patterns": cfg.patterns, "networks": NETWORKS,
                                       "fragment_grid": cfg.fragment_grid},
                        ("models", "step", "dim", "config"), defaults={"networks": 1, "patterns": None, "fragment_grid": 0})


def run(night: Night) -> dict:
    """Train both reconstructors on tonight's fragments and measure them on held-out frames.

    Returns:
        counts and versions, and ``metrics``: for fragments of held-out frames, the mean cosine
        to their clip's embedding and the share whose own clip is nearest (top 1, top 5), for
        the fragment as it is and completed by the MLP and the Hopfield network, with chance.
    """
    from memory.media import day_frames
    from memory.store import load_vectors

    cfg, day, paths, device = night.cfg.models.reconstruct, night.day, night.paths, night.device
    version_in = tonight_version(night, "vision")
    rows, vectors = load_vectors(night.engine, paths, space=SPACE, model_version=version_in, date=day)
    if not rows:
        return {"trained": False, "note": "no vision model trained tonight"}
    result: dict = {"input_version": version_in, "clips": len(rows)}
    if len(rows) < 3:
        return {**result, "trained": False, "note": "fewer than three clips with frames tonight"}

    seed = night_seed(night)
    stored = bank_rows(len(rows), cfg, seed)
    bank = vectors[stored]
    clip_ids = np.array([rows[i].clip_id for i in stored])
    bank_row_of = {int(c): i for i, c in enumerate(clip_ids)}
    with night.Session() as session:
        frames = [f for f in day_frames(session, day) if f.clip_id in bank_row_of]
    if len(frames) > cfg.max_frames:  # a seeded uniform sample of the night's frames
        keep = np.random.default_rng([seed, 0xF4A6]).choice(len(frames), cfg.max_frames, replace=False)
        frames = [frames[i] for i in np.sort(keep)]
    encoder = tonight_encoder(night)
    cache = decode_frames([paths.root / f.path for f in frames], encoder.img_size, device)
    wanted = round(len(frames) * cfg.replay_fraction / (1 - cfg.replay_fraction))
    replay = replay_keyframes(night, encoder, min(wanted, cfg.bank_max - len(stored)), seed)
    views = views_per_frame(len(cache.index) + len(replay.clip_ids), cfg)  # the same for both kinds of picture
    fragments, positions, kinds = fragment_embeddings(night, encoder, cache, views, cfg, seed)
    if len(fragments) < 3:
        return {**result, "trained": False, "note": "fewer than three frames could be read"}
    # Each fragment's own frame, clean: the MLP's and the pattern layer's completion target.
    frame_rows, frame_vectors = load_vectors(night.engine, paths, space="vision_frame", model_version=version_in,
                                             date=day)
    clean_of = {r.frame_id: i for i, r in enumerate(frame_rows)}
    clean_row = np.array([clean_of.get(f.frame_id, -1) for f in frames])  # per frame, -1: none stored
    has_clean = bool(len(frame_rows)) and bool((clean_row[positions] >= 0).all())
    # Pictures fragments are made of: tonight's frames, then the replayed keyframes. Each has its
    # clip and the key that holds it out (a frame by its id, a replayed clip by its own).
    clips_of = [f.clip_id for f in frames]
    held_keys = [f.frame_id for f in frames]
    if replay.clip_ids:
        replayed, replay_positions, replay_kinds = fragment_embeddings(night, encoder, replay.frames, views, cfg,
                                                                       seed + 1)
        fragments = np.concatenate([fragments, replayed])
        positions = np.concatenate([positions, replay_positions + len(frames)])
        kinds = kinds + replay_kinds
        bank = np.concatenate([bank, replay.vectors])
        bank_row_of.update({c: len(stored) + i for i, c in enumerate(replay.clip_ids)})
        clips_of += replay.clip_ids
        held_keys += [-1 - c for c in replay.clip_ids]
    clean = None
    if has_clean:
        # A replayed keyframe's clean vector is its clip's pattern: the keyframe is the clip's frame.
        pictures_clean = frame_vectors[clean_row]
        if replay.clip_ids:
            pictures_clean = np.concatenate([pictures_clean, replay.vectors])
        if cfg.noise_snr_db:
            framed = np.unique(positions)
            noisy, rows_n, kinds_n = noisy_fragments(pictures_clean[framed], cfg.noise_snr_db, seed)
            noisy = without_layout(noisy, fragments.shape[1])
            fragments = np.concatenate([fragments, noisy])
            positions = np.concatenate([positions, framed[rows_n]])
            kinds = kinds + kinds_n
        clean = pictures_clean[positions]
    targets = np.array([bank_row_of[clips_of[p]] for p in positions])
    earlier = positions >= len(frames)  # fragments of replayed clips
    # Held out by frame, not by clip: every clip is a memory the reconstructor must recall, and
    # a query brings a new glimpse of one, so it is measured on frames it never saw damaged.
    held = heldout_mask([held_keys[p] for p in positions], night.cfg.models.heldout_fraction, seed)
    train, measured = train_and_measure(held)

    resume = resume_reconstructors(night, int(vectors.shape[1]), cfg)
    trained = together(train_reconstructors, bank, fragments[train], targets[train], cfg, device, seed=seed,
                       clean=None if clean is None else clean[train], resume=resume.checkpoint)
    measured_metrics = evaluate(trained.models, bank, fragments[measured], targets[measured], device,
                                cfg.recall_top_k)
    # Headline first (the night's one-screen summary shows a stage's first scalar figures).
    metrics = {f"top1_{k}": measured_metrics[k]["top1"] for k in ("fragment", *VARIANTS)}
    metrics.update(measured_metrics)
    metrics.update({
        "measured_on": "held-out frames" if measured is held else "training frames (too few held out)",
        "by_kind": metrics_by_kind(trained.models, bank, fragments[measured], targets[measured],
                                   [k for k, m in zip(kinds, measured) if m], device, cfg.recall_top_k),
        "by_origin": _by_origin(trained.models, bank, fragments, targets, measured, earlier, device,
                                cfg.recall_top_k),
        "completion_target": "each fragment's own frame" if clean is not None else "its clip",
        "loss_curves": trained.history, "train_seconds": round(trained.seconds, 2),
        "hopfield_beta": round(float(trained.models["hopfield"].beta.detach()), 3), "use": cfg.use,
        "chosen": choose(metrics, cfg.use),
    })
    save_night_checkpoint(night, MODEL, {
        "models": {v: trained.models[v].state_dict() for v in VARIANTS}, "step": trained.step,
        "config": cfg.model_dump(mode="json"), "dim": int(vectors.shape[1]), "input_space": SPACE, "networks": NETWORKS,
        "input_version": version_in, "bank_rows": torch.as_tensor(stored), "chosen": metrics["chosen"],
        # The replayed clips' patterns: tonight's version may not hold their days yet (reembed
        # runs later, within its budget), so the completer's bank keeps them here.
        "replay_clips": torch.as_tensor(replay.clip_ids, dtype=torch.long),
        "replay_bank": torch.as_tensor(replay.vectors if replay.clip_ids else np.zeros((0, bank.shape[1]), np.float32))})
    log.info("reconstruct: held-out fragments find their clip first %.2f as they are, %.2f MLP, %.2f Hopfield,"
             " %.2f pattern layer; query --fragment uses %s", metrics["fragment"]["top1"], metrics["mlp"]["top1"],
             metrics["hopfield"]["top1"], metrics["pattern"]["top1"], metrics["chosen"])
    return {**result, "trained": True, "model_version": model_version(MODEL, day), "bank": len(bank),
            "frames": len(frames), "fragments": len(fragments),
            "views_per_frame": views,
            "replay": {"clips": len(replay.clip_ids), "days": len(set(replay.days)), "pool": replay.pool,
                       "fragments": int(earlier.sum())},
            "fragment_kinds": {k: kinds.count(k) for k in sorted(set(kinds))},
            # Drawn during training, on top of the fragments above (models.reconstruct.train.FreshNoise).
            "fresh_noise_share": cfg.noise_share if clean is not None and cfg.noise_snr_db else 0.0,
            "trained_on": int(train.sum()), **resume.as_result(),
            "steps": trained.steps, "metrics": metrics}


# --- query side ------------------------------------------------------------
REQUIRED = ("models", "config", "input_version", "bank_rows", "date", "dim", "chosen")


def load_completer(checkpoint: Path, engine, paths: Paths, version: str, use: str, device: str,
                   state: dict | None = None) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """The completion a reconstructor checkpoint offers for fragments of ``version``'s vectors.

    Args:
        use: ``models.reconstruct.use``; ``auto`` takes what that night measured best.
        state: the checkpoint already read (:func:`read_reconstructors`), so it is read once.
    Returns:
        ``(name, complete)``: ``"mlp"``, ``"hopfield"`` or ``"fragment"`` (completion did not
        help that night: fragments stay as they are), and ``(N, D) -> (N, D)`` unit vectors.
    Raises:
        UsageError: the checkpoint completes another vision version's fragments, or the
            clips it stored are gone from the memory.
    """
    from memory.store import load_vectors

    state = read_reconstructors(checkpoint) if state is None else state
    if state.get("networks", 1) != NETWORKS:
        raise UsageError(f"{checkpoint}: reconstructors of an older kind, which this version no longer reads; "
                         f"run a night to train new ones (sleep.py --date DATE --only reconstruct)")
    if state["input_version"] != version:
        raise UsageError(f"{checkpoint}: the reconstructor completes {state['input_version']} fragments, not "
                         f"{version}; run that night's reconstruct stage (sleep.py --date DATE --only reconstruct)")
    _, vectors = load_vectors(engine, paths, space=SPACE, model_version=version, date=state["date"])
    bank_rows = np.asarray(state["bank_rows"])
    if len(vectors) == 0 or bank_rows.max() >= len(vectors):
        raise UsageError(f"{checkpoint}: the clips it stored ({version}, {state['date']}) are no longer in the "
                         f"memory; run that night's reconstruct stage again")
    bank = vectors[bank_rows]
    replayed = state.get("replay_bank")  # earlier days' patterns (checkpoints before replay have none)
    if replayed is not None and len(replayed):
        bank = np.concatenate([bank, np.asarray(replayed, dtype=np.float32)])
    variant = state["chosen"] if use == "auto" else use
    dim = int(state["dim"])
    if variant == "fragment":  # the mean embedding, as it is (a description's first dim columns)
        return variant, lambda fragments: fragments[:, :dim] / np.linalg.norm(fragments[:, :dim], axis=1, keepdims=True)
    model = build(variant, dim, ReconstructConfig.model_validate(state["config"]))
    model.load_state_dict(state["models"][variant])
    model.to(device)
    return variant, completer(model, bank, device, state["config"].get("recall_top_k"))


def read_reconstructors(checkpoint: Path) -> dict:
    """A reconstructor checkpoint, checked for what :func:`load_completer` needs."""
    return load_checkpoint(checkpoint, REQUIRED)


def fragment_grid_of(state: dict) -> int:
    """The layout a reconstructor checkpoint's fragments are described with (0: older ones, the mean only)."""
    return int((state.get("config") or {}).get("fragment_grid", 0))


def encode_fragment_file(path: str | Path, cfg: SleepConfig, paths: Paths, engine, device: str
                         ) -> tuple[str, np.ndarray]:
    """Embed an image of part of a moment and complete it into a clip embedding.

    Args:
        path: any image PIL reads: a crop, a glimpse, a blurred or partly hidden picture.
        cfg: the validated config (``models.reconstruct.use`` picks the variant).
        paths: the layout (checkpoints and shards).
        engine: the memory database (the Hopfield variant recalls from the stored clips).
        device: ``"cpu"`` or ``"cuda"``.
    Returns:
        ``(model_version, vector)``: the vision version (``jepa@{date}``) and the completed
        ``(dim,)`` vector, to search the space ``vision``.
    Raises:
        UsageError: unreadable image, no reconstructor yet, or one trained for an older
            vision model than the newest.
    """
    checkpoint = latest_checkpoint(paths.checkpoints / MODEL)
    if checkpoint is None:
        raise UsageError(f"{paths.checkpoints / MODEL}: no reconstructor yet; run a night first")
    state = read_reconstructors(checkpoint)
    version, fragment = encode_image_file(path, cfg, paths, device, grid=fragment_grid_of(state))
    use = cfg.models.reconstruct.use
    variant, completer = load_completer(checkpoint, engine, paths, version, use, device, state)
    log.info("--fragment: completed with %s (%s)", variant if variant != "fragment" else "nothing: the fragment as it is",
             "measured best on that night's held-out frames" if use == "auto" else "models.reconstruct.use")
    return version, completer(fragment[None])[0]
