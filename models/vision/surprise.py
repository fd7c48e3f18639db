"""How badly the trained I-JEPA predicts an image: its prediction error, per image.

The night's own loss, evaluated without training: the predictor, from a context block,
predicts the EMA target encoder's (layer-normed) tokens of the target blocks; the error is
the smooth L1 between the two, averaged over the target tokens. The masks are fixed (the
collator's draws for steps ``0 .. draws-1`` with one seed), so two images are measured on
the same blocks and a rerun gives the same figures. A high error is a frame the model did
not see coming.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.config import JepaConfig
from models.checkpoint import CheckpointError, load_checkpoint
from models.vision.frames import normalise
from models.vision.jepa import ARCH_KEYS, JEPA
from models.vision.masks import MultiBlockMaskCollator, apply_masks

MASK_SEED = 0x5EED  # fixed: the same blocks every night


def load_jepa(path: Path, cfg: JepaConfig, device: str) -> JEPA:
    """Encoder, predictor and EMA target encoder of a JEPA checkpoint, in eval mode.

    The network is built from the checkpoint's own config (as :func:`models.vision.embed.load_target_encoder`).

    Raises:
        CheckpointError: unreadable checkpoint or weights that do not load.
    """
    state = load_checkpoint(path, ("model", "ema", "config"))
    saved = {k: state["config"][k] for k in ARCH_KEYS if k in state["config"]}
    model = JEPA(cfg.model_copy(update=saved))
    try:
        model.encoder.load_state_dict(state["model"]["encoder"])
        model.predictor.load_state_dict(state["model"]["predictor"])
        model.target_encoder.load_state_dict(state["ema"]["shadow"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: JEPA weights do not load ({exc})") from None
    return model.to(device).eval()


@torch.no_grad()
def prediction_errors(model: JEPA, images: torch.Tensor, cfg: JepaConfig, *, draws: int = 4,
                      batch_size: int = 64, bf16: bool = True) -> np.ndarray:
    """The predictor's error on each image, over ``draws`` fixed mask sets.

    Args:
        model: a trained :class:`JEPA` (see :func:`load_jepa`).
        images: ``(N, 3, S, S)`` uint8 frames at the model's size.
        cfg: the ``models.jepa`` config (mask shapes: ``num_targets``, scales, ``min_keep``).
        draws: mask sets averaged per image.
        batch_size: images per forward pass.
        bf16: autocast to bfloat16 on CUDA.
    Returns:
        ``(N,)`` float32 mean smooth-L1 error per image.
    """
    device = next(model.parameters()).device
    collator = MultiBlockMaskCollator(model.encoder.grid, cfg.num_targets, cfg.target_scale, cfg.target_aspect,
                                      cfg.context_scale, cfg.min_keep, MASK_SEED)
    masks = [collator(1, step) for step in range(draws)]  # one mask set, shared by every image
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and bf16
                else contextlib.nullcontext())
    out = np.zeros(len(images), np.float32)
    for start in range(0, len(images), batch_size):
        batch = normalise(images[start:start + batch_size].to(device))
        B = batch.shape[0]
        total = torch.zeros(B, device=device)
        with autocast:
            h = model.target_encoder(batch)  # (B, N, D)
            h = F.layer_norm(h.float(), (h.size(-1),))
            for mask in masks:
                context = mask.context.to(device).expand(B, -1)  # (B, Nc)
                targets = mask.targets.to(device).expand(-1, B, -1).contiguous()  # (M, B, Nt)
                M, _, Nt = targets.shape
                wanted = apply_masks(h.repeat(M, 1, 1), targets.reshape(M * B, Nt))  # (M*B, Nt, D)
                z = model.predictor(model.encoder(batch, context), context, targets)  # (M*B, Nt, D)
                err = F.smooth_l1_loss(z.float(), wanted, reduction="none").mean(dim=(1, 2))  # (M*B,)
                total += err.reshape(M, B).mean(dim=0)
        out[start:start + B] = (total / len(masks)).cpu().numpy()
    return out
