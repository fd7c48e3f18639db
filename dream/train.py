"""Train the dream decoder on one night's frames and their vision embeddings.

AdamW with warm-up and cosine decay (a pure function of the step, as every nightly trainer
here); bf16 autocast on CUDA; the frames stay a uint8 tensor and batches are gathered from
it. Each night continues from the last checkpoint when its shapes fit.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from models import schedules
from pipeline.config import DreamConfig

from .decoder import DreamDecoder, diffusion_loss, noise_scheduler

log = logging.getLogger(__name__)


@dataclass
class DreamTrainResult:
    model: DreamDecoder
    optimizer: torch.optim.Optimizer
    step: int                 # global, over all nights
    steps: int                # tonight's
    seconds: float
    images_per_second: float
    losses: list[float] = field(default_factory=list)  # every log_every steps


def train_decoder(images: torch.Tensor, cond: np.ndarray, cfg: DreamConfig, device: str, *,
                  resume: dict | None = None, steps: int | None = None, progress: bool = True) -> DreamTrainResult:
    """Fit the decoder to ``(N, 3, S, S)`` uint8 frames and their ``(N, D)`` embeddings.

    Args:
        resume: last night's checkpoint (``model``, ``optimizer``, ``step``) when its shapes fit.
        steps: overrides ``cfg.steps``.
    Raises:
        ValueError: no frames, or frames and embeddings of different counts.
    """
    if len(images) == 0 or len(images) != len(cond):
        raise ValueError(f"{len(images)} frames and {len(cond)} embeddings: need the same number, at least one")
    torch.manual_seed(cfg.seed)
    model = DreamDecoder(cond.shape[1], cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    global_step = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        global_step = int(resume["step"])
    frames = images.to(device) if device.startswith("cuda") else images
    conds = torch.as_tensor(np.asarray(cond, dtype=np.float32), device=device)
    scheduler = noise_scheduler()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") and cfg.bf16
                else contextlib.nullcontext())
    total = cfg.steps if steps is None else steps
    generator = torch.Generator().manual_seed(cfg.seed + global_step)
    batch = min(cfg.batch_size, len(frames))
    losses: list[float] = []
    model.train()
    started = time.perf_counter()
    for it in tqdm(range(total), desc="dream", unit="step", disable=not progress, leave=False):
        rows = torch.randint(len(frames), (batch,), generator=generator)
        lr = schedules.warmup_cosine(it, total, cfg.warmup_steps, 0.0, cfg.lr, 0.1 * cfg.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast:
            loss = diffusion_loss(model, frames[rows.to(frames.device)].to(device), conds[rows.to(device)],
                                  scheduler, cfg.cond_dropout, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        global_step += 1
        if (it + 1) % cfg.log_every == 0 or it + 1 == total:
            losses.append(round(loss.item(), 5))
            log.info("dream step %d/%d: loss %.4f", it + 1, total, losses[-1])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    model.eval()
    return DreamTrainResult(model, optimizer, global_step, total, seconds,
                            total * batch / seconds if seconds > 0 else 0.0, losses)
