"""Feature-space completion and compressed memories, on one night (issue #16).

    python bench/feature_completion.py ROOT [--date D] [--config C] [--set k=v] [--steps N] [--json]

Two figures, the seed's DINOv2 experiment run on our own vision encoder:

1. **Inpainting masked patch tokens.** A :class:`~models.vision.inpaint.PatchInpainter`
   (``models.inpaint``; stage ``inpaint`` trains one every night, continuing the last, and
   this bench trains a fresh one with ``--steps``) is trained on the night's training frames
   (:func:`stages.common.heldout_mask` with the night's seed) against
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch

from core.config import load_config
from core.device import resolve_device
from core.paths import Paths
from memory import make_sessionmaker, open_database
from models.checkpoint import latest_checkpoint
from models.retrieval import pca_knn_agreement  # noqa: F401  (the tests reach it through the bench)
from stages import Night
from stages.common import model_of
from stages.inpaint import measure as measure_night


def measure(root: Path, date: dt.date, config: str | None = None, overrides: list[str] | None = None, *,
            steps: int | None = None, views: int = 4, max_vectors: int = 20000, progress: bool = False) -> dict:
    """Both figures of one night (see the module docstring): stage ``inpaint``'s own
    :func:`stages.inpaint.measure`, with a fresh inpainter and the steps asked for.

    Raises:
        ValueError: no held-out frame or no training frame, or the night has no vision vectors.
    """
    cfg = load_config(config, overrides or [])
    paths = Paths.at(root)
    engine = open_database(paths.database)
    try:
        night = Night(date, cfg, paths, engine, make_sessionmaker(engine), resolve_device(cfg.runtime.device),
                      logging.getLogger("bench"))
        figures, _ = measure_night(night, steps=steps, views=views, max_vectors=max_vectors, progress=progress)
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
