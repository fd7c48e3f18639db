"""Frames -> vectors with a trained JEPA target encoder (average-pooled patch tokens)."""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from core.config import JepaConfig
from models.checkpoint import CheckpointError, load_checkpoint
from models.vision.frames import normalise
from models.vision.jepa import ARCH_KEYS, build_encoder
from models.vision.vit import VisionTransformer


@torch.no_grad()
def embed_frames(encoder: VisionTransformer, images: torch.Tensor, *, batch_size: int = 256,
                 bf16: bool = True) -> np.ndarray:
    """Embed uint8 frames: the mean of the encoder's output tokens per frame.

    Args:
        encoder: a ViT (the EMA target encoder); its device is used.
        images: ``(N, 3, S, S)`` uint8 frames (any device), as made by
            :func:`models.frames.decode_frames`.
        batch_size: frames per forward pass.
        bf16: autocast to bfloat16 on CUDA.
    Returns:
        ``(N, dim)`` float32 array.
    """
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and bf16
                else contextlib.nullcontext())
    out = np.zeros((images.shape[0], encoder.dim), dtype=np.float32)
    for start in range(0, images.shape[0], batch_size):
        batch = images[start:start + batch_size].to(device, non_blocking=True)
        with autocast:
            tokens = encoder(normalise(batch))  # (B, N, D)
        out[start:start + batch.shape[0]] = tokens.float().mean(dim=1).cpu().numpy()
    encoder.train(was_training)
    return out


def load_target_encoder(path: Path, cfg: JepaConfig, device: str) -> VisionTransformer:
    """The EMA target encoder saved in a JEPA checkpoint, in eval mode on ``device``.

    The network is built from the checkpoint's own config, so a query still works after
    someone changes ``models.jepa`` sizes before the next night has trained them.

    Raises:
        CheckpointError: unreadable checkpoint or weights that do not load.
    """
    state = load_checkpoint(path, ("ema", "config"))
    saved = {k: state["config"][k] for k in ARCH_KEYS if k in state["config"]}
    encoder = build_encoder(cfg.model_copy(update=saved))
    try:
        encoder.load_state_dict(state["ema"]["shadow"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: target encoder does not load ({exc})") from None
    return encoder.to(device).eval()
