"""The I-JEPA night's training with and without cuDNN's attention kernel, on CUDA.

    python bench/jepa_attention.py FRAMES_DIR [--steps 700] [--variants cudnn,nocudnn]

Trains ``models.vision.train.train_night`` (``configs/default.yaml``, eager, bf16) on the
JPEG frames under FRAMES_DIR (for instance ``data/frames/DATE`` of an ingested day) once per
variant, each from the same seed, and prints per variant: wall time, images per second after
the first 10 steps, and the steps whose gradient was not finite (skipped by the trainer).

- ``cudnn``: torch's own choice of attention kernels, cuDNN's included (what the trainer did
  before 2026-12-04);
- ``nocudnn``: flash, memory-efficient and math only (what the trainer uses now,
  ``models.vision.train.TRAINING_ATTENTION``).

Measured on an H200 (torch 2.11, the demo day, 700 steps): cudnn 46.8 s, 2,265 images/s, 12
skipped steps; nocudnn 22.8 s, 4,009 images/s, none (BENCHMARKS.md, "The first GPU").
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import load_config  # noqa: E402
from models.vision import train  # noqa: E402
from models.vision.frames import decode_frames  # noqa: E402

VARIANTS = {
    "cudnn": [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
              SDPBackend.MATH],
    "nocudnn": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("frames", help="a folder of JPEG frames (searched recursively)")
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--variants", default="cudnn,nocudnn", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--config", default=None, help="default: configs/default.yaml")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    cfg = load_config(args.config).models.jepa.model_copy(update={"steps": args.steps, "compile": False})
    paths = sorted(Path(args.frames).rglob("*.jpg"))
    if not paths:
        parser.error(f"{args.frames}: no .jpg frames under it")
    frames = decode_frames(paths, cfg.img_size, progress=False).images
    print(f"{len(paths)} frames; torch {torch.__version__}; {args.device}", flush=True)
    for name in args.variants.split(","):
        if name not in VARIANTS:
            parser.error(f"unknown variant {name!r}")
        train.TRAINING_ATTENTION = VARIANTS[name]  # looked up by JepaTrainer at every step
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            result = train.train_night(cfg, frames, None, date=dt.date(2026, 1, 15), checkpoint_dir=Path(folder),
                                       device=args.device, progress=False)
        losses = np.asarray(result.losses)
        print(f"{name:8} {time.perf_counter() - started:6.1f} s, {result.images_per_second:7.0f} images/s after "
              f"10 steps, {result.skipped_steps} step(s) with a gradient that was not finite, final loss "
              f"{np.nanmean(losses[-50:]):.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
