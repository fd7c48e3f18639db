"""Encode an image file for ``sleep.py query --image`` with the newest vision checkpoint."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pipeline.config import SleepConfig
from pipeline.errors import UsageError
from pipeline.paths import Paths

from .checkpoint import latest_checkpoint, model_version
from .frames import square_frame
from .vision_embed import embed_frames, load_target_encoder
from .vision_stage import MODEL


def encode_image_file(path: str | Path, cfg: SleepConfig, paths: Paths, device: str) -> tuple[str, np.ndarray]:
    """Embed an image the way the night embedded its frames.

    Args:
        path: any image PIL reads (JPEG, PNG, ...).
        cfg: the validated config (``cfg.models.jepa`` is used).
        paths: the layout (checkpoints are read from ``paths.checkpoints / "jepa"``).
        device: ``"cpu"`` or ``"cuda"``.
    Returns:
        ``(model_version, vector)``: ``"jepa@{date}"`` of the checkpoint used and a
        ``(dim,)`` float32 vector, to search the ``vision`` or ``vision_frame`` space.
    Raises:
        UsageError: the file cannot be read as an image, or no vision model is trained yet.
        CheckpointError: the newest checkpoint is unreadable.
    """
    path = Path(path)
    checkpoint = latest_checkpoint(paths.checkpoints / MODEL)
    if checkpoint is None:
        raise UsageError(f"{paths.checkpoints / MODEL}: no vision model yet; run a night first")
    try:
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise UsageError(f"{path}: cannot read image ({exc})") from None
    encoder = load_target_encoder(checkpoint, cfg.models.jepa, device)
    image = torch.from_numpy(pixels.copy()).permute(2, 0, 1)  # (3, H, W) uint8
    frame = square_frame(image, encoder.img_size).unsqueeze(0)
    vector = embed_frames(encoder, frame, batch_size=1, bf16=cfg.models.jepa.bf16)[0]
    return model_version(MODEL, checkpoint.stem), vector
