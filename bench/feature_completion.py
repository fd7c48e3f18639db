"""Feature-space completion and compressed memories, on one night (issue #16).

    python bench/feature_completion.py ROOT [--date D] [--config C] [--set k=v] [--steps N] [--json]

Two figures, the seed's DINOv2 experiment run on our own vision encoder:

1. **Inpainting masked patch tokens.** A :class:`~models.vision.inpaint.PatchInpainter`
   (``models.inpaint``) is trained on the night's training frames (the held-out split of
   stage ``reconstruct``: :func:`stages.common.heldout_mask` with the night's seed) against
   the night's frozen vision encoder. On each held-out frame, ``--views`` fragments keep a
   contiguous block of ``keep_share`` of the patches (a 25 % block: a crop-like quarter); the
   encoder sees only those patches. Each fragment searches the night's clip vectors (space
   ``vision``, cosine) three ways: (a) the mean of its visible tokens, (b) the mean of the
   inpainted full grid, (c) the clean frame, the upper bound. Printed: R@1 and R@5 of the
   frame's own clip, the cosine to the clean frame's embedding, chance, and (b)'s R@1 over
   (a)'s, the baseline ratio.
2. **Memories stored compressed.** The night's clip vectors (``vision``) and frame vectors
   (``vision_frame``) compressed by PCA to each of ``models.inpaint.pca_dims``, decompressed,
   and searched by cosine: the mean share of each vector's ``knn_k`` nearest neighbours that
   are the same as with the original vectors (1.0: the same neighbours), and the share of the
   variance kept. A day with fewer vectors than a size keeps them whole at that size.

Run a night first (stage ``vision`` writes the checkpoint and both spaces).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np
import torch

from core.config import load_config
from core.device import resolve_device
from core.paths import Paths
from memory import day_frames, make_sessionmaker, open_database
from memory.store import load_vectors
from models.checkpoint import checkpoint_path, latest_checkpoint
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
)

EVAL_SALT = 0x1F16  # the held-out fragments' masks: another stream than training's


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest(vectors: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """``(N, k)`` rows of each vector's ``k`` nearest others by cosine (itself excluded), as sets."""
    x = _unit(vectors)
    out = np.empty((len(x), k), dtype=np.int64)
    for start in range(0, len(x), chunk):
        sims = x[start:start + chunk] @ x.T  # (C, N)
        sims[np.arange(len(sims)), np.arange(start, start + len(sims))] = -np.inf
        out[start:start + len(sims)] = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return out


def pca_knn_agreement(vectors: np.ndarray, dims: list[int], k: int = 10) -> dict:
    """How well vectors compressed by PCA keep their nearest neighbours.

    PCA is fitted on ``vectors`` themselves (an SVD of the centred rows); each is stored as its
    first ``d`` coordinates, decompressed (mean plus those coordinates on the components) and
    searched by cosine among the others, as the memory searches.

    Args:
        vectors: ``(N, D)``, N >= 2.
        dims: sizes to compress to; one at or above ``min(N, D)`` keeps the vectors whole.
        k: neighbours compared (at most ``N - 1``).
    Returns:
        ``{"vectors", "dim", "k", "sizes": [{"dim", "agreement", "variance_kept"}, ...]}``, one
        entry per size in ``dims`` order; ``agreement`` is the mean over vectors of the share of
        their ``k`` nearest neighbours found both with the original and the compressed vectors.
    Raises:
        ValueError: fewer than two vectors.
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need at least two vectors, got shape {x.shape}")
    k = min(k, len(x) - 1)
    mean = x.mean(axis=0)
    _, singular, components = np.linalg.svd(x - mean, full_matrices=False)  # (r,), (r, D)
    variance = singular ** 2
    reference = nearest(x, k)
    sizes = []
    for d in dims:
        basis = components[:min(d, len(components))]
        restored = mean + ((x - mean) @ basis.T) @ basis
        found = nearest(restored, k)
        shared = (reference[:, :, None] == found[:, None, :]).any(axis=2).sum(axis=1)
        sizes.append({"dim": int(d), "agreement": round(float(shared.mean() / k), 4),
                      "variance_kept": round(float(variance[:len(basis)].sum() / max(variance.sum(), 1e-30)), 4)})
    return {"vectors": len(x), "dim": int(x.shape[1]), "k": int(k), "sizes": sizes}


def recall(queries: np.ndarray, clips: np.ndarray, targets: np.ndarray, clean: np.ndarray) -> dict:
    """R@1 and R@5 of each query's own clip (``targets``: rows of ``clips``) by cosine, and its
    mean cosine to the clean frame's embedding ``clean`` (row by row)."""
    sims = _unit(queries) @ _unit(clips).T
    own = sims[np.arange(len(sims)), targets][:, None]
    rank = (sims > own).sum(axis=1) + 1
    return {"top1": round(float((rank <= 1).mean()), 4), "top5": round(float((rank <= 5).mean()), 4),
            "cosine": round(float((_unit(queries) * _unit(clean)).sum(axis=1).mean()), 4)}


def measure(root: Path, date: dt.date, config: str | None = None, overrides: list[str] | None = None, *,
            steps: int | None = None, views: int = 4, max_vectors: int = 20000, progress: bool = False) -> dict:
    """Both figures of one night (see the module docstring).

    Args:
        steps: inpainter steps (default ``models.inpaint.steps``).
        views: fragments (mask draws) per held-out frame.
        max_vectors: vectors per space the PCA figure is measured on at most (a seeded sample).
    Raises:
        ValueError: no held-out frame or no training frame, or the night has no vision vectors.
    """
    cfg = load_config(config, overrides or [])
    icfg = cfg.models.inpaint
    paths = Paths.at(root)
    device = resolve_device(cfg.runtime.device)
    engine = open_database(paths.database)
    try:
        night = Night(date, cfg, paths, engine, make_sessionmaker(engine), device, logging.getLogger("bench"))
        seed = night_seed(night)
        version = model_version(model_of("vision"), date)
        rows, clips = load_vectors(engine, paths, space="vision", model_version=version, date=date.isoformat())
        if not rows:
            raise ValueError(f"{root}: no {version} clip vectors for {date}; run stage vision first")
        row_of_clip = {r.clip_id: i for i, r in enumerate(rows)}
        with night.Session() as session:
            frames = [f for f in day_frames(session, date.isoformat()) if f.clip_id in row_of_clip]
        held = heldout_mask([f.frame_id for f in frames], cfg.models.heldout_fraction, seed)
        if held.all() or not held.any():
            raise ValueError(f"{len(frames)} frames, {int(held.sum())} held out: nothing to train or to measure on "
                             "(see models.heldout_fraction)")
        jepa = cfg.models.jepa
        encoder = load_target_encoder(checkpoint_path(checkpoint_folder(paths, "vision"), date), jepa, device)
        cache = decode_frames([paths.root / f.path for f in frames], encoder.img_size, device, progress=False)
        is_held = held[cache.index]

        started = time.perf_counter()
        model, history = train_inpainter(encoder, cache.images[~is_held], icfg, device, steps=steps, seed=seed,
                                         progress=progress)
        train_seconds = time.perf_counter() - started

        images = cache.images[is_held]
        targets = np.array([row_of_clip[frames[i].clip_id] for i, h in zip(cache.index, is_held) if h])
        clean = embed_frames(encoder, images, batch_size=jepa.embed_batch_size, bf16=jepa.bf16)
        generator = torch.Generator().manual_seed(seed ^ EVAL_SALT)
        visible_means, inpainted_means = [], []
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
        found = {kind: recall(q, clips, query_targets, query_clean) for kind, q in queries.items()}

        figures: dict = {
            "date": date.isoformat(), "vision_version": version, "clips": len(rows),
            "train_frames": int((~is_held).sum()), "heldout_frames": int(is_held.sum()), "views": views,
            "queries": len(query_targets), "patches": encoder.num_patches,
            "visible_patches": int(keep.shape[1]), "keep_share": icfg.keep_share,
            "chance_top1": round(1 / len(rows), 4), "chance_top5": round(min(5, len(rows)) / len(rows), 4),
            "steps": len(history), "loss_first": round(history[0], 4), "loss_last": round(history[-1], 4),
            "train_seconds": round(train_seconds, 2), "recall": found,
            "ratio_top1": round(found["inpainted"]["top1"] / max(found["visible"]["top1"], 1e-12), 3),
        }

        rng = np.random.default_rng([seed, EVAL_SALT])
        figures["pca"] = {}
        for space in ("vision", "vision_frame"):
            _, vectors = load_vectors(engine, paths, space=space, model_version=version, date=date.isoformat())
            if len(vectors) < 2:
                continue
            if len(vectors) > max_vectors:
                vectors = vectors[np.sort(rng.choice(len(vectors), max_vectors, replace=False))]
            started = time.perf_counter()
            figures["pca"][space] = pca_knn_agreement(vectors, icfg.pca_dims, icfg.knn_k)
            figures["pca"][space]["seconds"] = round(time.perf_counter() - started, 2)
        return figures
    finally:
        engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="a root with at least one night (data/, memory/, checkpoints/)")
    parser.add_argument("--date", help="the night (default: the newest vision checkpoint's)")
    parser.add_argument("--config", help="the config the night ran with (default: configs/default.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, help="inpainter steps (default: models.inpaint.steps)")
    parser.add_argument("--views", type=int, default=4, help="fragments per held-out frame (default 4)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON at the end")
    args = parser.parse_args()
    root = Path(args.root)
    if args.date:
        date = dt.date.fromisoformat(args.date)
    else:
        found = latest_checkpoint(root / "checkpoints" / model_of("vision"))
        if found is None:
            print(f"{root}: no vision checkpoint; run a night first", file=sys.stderr)
            return 2
        date = dt.date.fromisoformat(found.stem)
    try:
        figures = measure(root, date, args.config, args.overrides, steps=args.steps, views=args.views,
                          progress=sys.stderr.isatty())
    except ValueError as exc:
        print(f"{root}: {exc}", file=sys.stderr)
        return 2
    figures["machine"] = f"{platform.machine()}, python {platform.python_version()}, torch {torch.__version__}"
    print(f"{figures['date']}: {figures['queries']} fragments ({figures['views']} per held-out frame, "
          f"{figures['heldout_frames']} frames) keeping {figures['visible_patches']} of {figures['patches']} "
          f"patches, against {figures['clips']} clips; {figures['vision_version']}")
    print(f"inpainter: {figures['steps']} steps on {figures['train_frames']} frames in {figures['train_seconds']} s, "
          f"loss {figures['loss_first']} -> {figures['loss_last']}")
    print(f"{'query':28}{'R@1':>7}{'R@5':>7}{'cos to clean':>14}")
    labels = {"visible": "(a) visible tokens' mean", "inpainted": "(b) inpainted grid's mean",
              "clean": "(c) clean frame (bound)"}
    for kind, row in figures["recall"].items():
        print(f"{labels[kind]:28}{row['top1']:>7.3f}{row['top5']:>7.3f}{row['cosine']:>14.3f}")
    print(f"{'chance':28}{figures['chance_top1']:>7.3f}{figures['chance_top5']:>7.3f}")
    print(f"inpainted / visible R@1: {figures['ratio_top1']:.3f}x")
    for space, pca in figures["pca"].items():
        sizes = ", ".join(f"{s['dim']}: {s['agreement']:.3f} ({s['variance_kept']:.3f} var)" for s in pca["sizes"])
        print(f"PCA {space} ({pca['vectors']} x {pca['dim']}, k={pca['k']}) neighbours kept at {sizes}")
    if args.json:
        print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
