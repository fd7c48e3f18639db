"""Frames -> vectors with a trained JEPA target encoder: average-pooled patch tokens (what is
in the picture), or pooled over a grid of regions (what is where: :func:`embed_layouts`)."""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.config import JepaConfig
from models.checkpoint import CheckpointError, load_checkpoint
from models.vision.frames import normalise
from models.vision.jepa import ARCH_KEYS, build_encoder
from models.vision.vit import VisionTransformer


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
    return _pooled(encoder, images, lambda tokens: tokens.mean(dim=1), (encoder.dim,), batch_size, bf16)


def embed_layouts(encoder: VisionTransformer, images: torch.Tensor, *, grid: int = 4, batch_size: int = 256,
                  bf16: bool = True) -> np.ndarray:
    """Embed uint8 frames as a ``grid x grid`` layout: the encoder's patch tokens averaged over
    each region of the picture (an R-MAC-style regional descriptor), each region unit length.

    Two frames' layouts compare by :func:`layout_scores`. Where :func:`embed_frames` keeps only
    what a picture holds, this keeps where, which tells apart look-alike scenes (another day's
    Game of Life, the same kitchen from another corner) whose means differ in the third decimal.

    Args:
        grid: regions per side (adaptive pooling: any size up to the patch grid's side).
        the rest: as :func:`embed_frames`.
    Returns:
        ``(N, grid * grid, dim)`` float32, regions in row-major order.
    """
    return _pooled(encoder, images, lambda tokens: _regions(tokens, grid), (grid * grid, encoder.dim), batch_size,
                   bf16)


def _regions(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """``(B, grid * grid, D)``: patch tokens ``(B, N, D)`` averaged over each region, unit length."""
    side = int(round(tokens.shape[1] ** 0.5))
    maps = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)  # (B, D, side, side)
    pooled = F.adaptive_avg_pool2d(maps.float(), grid).flatten(2).transpose(1, 2)  # (B, grid*grid, D)
    return F.normalize(pooled, dim=-1)


def embed_fragments(encoder: VisionTransformer, images: torch.Tensor, *, grid: int, batch_size: int = 256,
                    bf16: bool = True) -> np.ndarray:
    """Describe uint8 pictures of fragments for the reconstructors: the mean of the encoder's
    tokens (what :func:`embed_frames` gives, the first ``dim`` columns), then the tokens
    averaged over each region of a ``grid x grid`` layout, each region unit length.

    Returns:
        ``(N, dim * (1 + grid * grid))`` float32; ``grid`` 0 gives :func:`embed_frames`.
    """
    if grid == 0:
        return embed_frames(encoder, images, batch_size=batch_size, bf16=bf16)

    def describe(tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([tokens.mean(dim=1), _regions(tokens, grid).flatten(1)], dim=1)

    return _pooled(encoder, images, describe, (encoder.dim * (1 + grid * grid),), batch_size, bf16)


def layout_scores(query: np.ndarray, layouts: np.ndarray) -> np.ndarray:
    """How alike ``query`` ``(R, D)`` and each of ``layouts`` ``(K, R, D)`` are: the mean cosine
    of corresponding regions, ``(K,)`` in [-1, 1]."""
    return np.einsum("rd,krd->k", query, layouts) / query.shape[0]


@torch.no_grad()
def _pooled(encoder: VisionTransformer, images: torch.Tensor, pool, shape: tuple[int, ...], batch_size: int,
            bf16: bool) -> np.ndarray:
    """``pool(tokens (B, N, D))`` of every frame, batched: ``(N, *shape)`` float32."""
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and bf16
                else contextlib.nullcontext())
    parts = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start:start + batch_size].to(device, non_blocking=True)
        with autocast:
            tokens = encoder(normalise(batch))  # (B, N, D)
        parts.append(pool(tokens.float()).cpu().numpy())
    encoder.train(was_training)
    if not parts:
        return np.zeros((0, *shape), np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


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


def shared_target_encoder(path: Path, cfg: JepaConfig, device: str) -> VisionTransformer:
    """:func:`load_target_encoder`, kept for the process while the file is unchanged.

    An image query embeds its example with the searched version and orders the hits by
    layout with the newest (:mod:`stages.layout`): most of the time one checkpoint, which
    was read and built twice. Keyed by the file's path, size and modification time, so a
    night that writes the checkpoint again is seen; two encoders are kept at most. Callers
    share the module: they must not train it or move it.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return load_target_encoder(path, cfg, device)  # its error names the file and the reason
    return _remembered_encoder(str(path.resolve()), stat.st_size, stat.st_mtime_ns, cfg.model_dump_json(), device)


@functools.lru_cache(maxsize=2)
def _remembered_encoder(path: str, size: int, mtime_ns: int, cfg_json: str, device: str) -> VisionTransformer:
    return load_target_encoder(Path(path), JepaConfig.model_validate_json(cfg_json), device)
