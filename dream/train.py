"""Train the dream decoder on one night's frames and their vision embeddings.

AdamW with warm-up and cosine decay (a pure function of the step, as every nightly trainer
here); bf16 autocast on CUDA; the frames stay a uint8 tensor and batches are gathered from
it. An EMA of the weights (diffusers ``EMAModel``) follows every step: dreams are drawn with
it, since a few hundred steps of a small batch leave the raw weights noisy. Each night
continues from the last checkpoint when its shapes fit, EMA included (a checkpoint written
before the EMA existed starts it from its weights).
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from core.config import DreamConfig
from core.progress import bar_off
from dream.decoder import (
    DreamDecoder,
    diffusion_loss,
    ema_decoder,
    make_ema,
    noise_scheduler,
)
from models import schedules
from models.checkpoint import restore_training
from models.distributed import Objective, current

log = logging.getLogger(__name__)
PROJECT_AFTER = 6  # steps run before checking the time budget (the first one is not timed: warm-up)


@dataclass
class DreamTrainResult:
    model: DreamDecoder       # the raw weights, as trained
    ema: EMAModel             # their average: what dreams are drawn with (:meth:`dreamer`)
    optimizer: torch.optim.Optimizer
    step: int                 # global, over all nights
    steps: int                # tonight's
    seconds: float
    images_per_second: float
    losses: list[float] = field(default_factory=list)  # every log_every steps
    budget_cut: str | None = None  # why fewer steps than configured ran, if they did

    def dreamer(self) -> DreamDecoder:
        """A copy of the decoder holding the EMA weights, in eval mode."""
        return ema_decoder(self.model, self.ema)

    def state(self) -> dict:
        """What a checkpoint keeps of the training: both weights, the EMA, optimizer, step."""
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "step": self.step}


def train_decoder(images: torch.Tensor, cond: np.ndarray, cfg: DreamConfig, device: str, *,
                  resume: dict | None = None, steps: int | None = None, progress: bool = True) -> DreamTrainResult:
    """Fit the decoder to ``(N, 3, S, S)`` uint8 frames and their ``(N, D)`` embeddings.

    Args:
        resume: last night's checkpoint (``model``, ``optimizer``, ``step``, and ``ema`` unless it
            predates the EMA) when its shapes fit.
        steps: overrides ``cfg.steps``.
    Raises:
        ValueError: no frames, or frames and embeddings of different counts.
    """
    if len(images) == 0 or len(images) != len(cond):
        raise ValueError(f"{len(images)} frames and {len(cond)} embeddings: need the same number, at least one")
    torch.manual_seed(cfg.seed)
    model = DreamDecoder(cond.shape[1], cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    global_step = restore_training(resume, model, optimizer)
    ema = make_ema(model, cfg.ema_decay, (resume or {}).get("ema"), global_step)
    frames = images.to(device) if device.startswith("cuda") else images
    conds = torch.as_tensor(np.asarray(cond, dtype=np.float32), device=device)
    scheduler = noise_scheduler()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") and cfg.bf16
                else contextlib.nullcontext())
    total = cfg.steps if steps is None else steps
    generator = torch.Generator().manual_seed(cfg.seed + global_step)
    batch = min(cfg.batch_size, len(frames))
    losses: list[float] = []
    budget_cut = None
    model.train()
    # Under torchrun each process trains on its slice of every batch, the noise drawn for the
    # whole batch (models.distributed): N processes take the step one process would.
    ranks = current()
    objective = ranks.wrap(Objective(model, diffusion_loss))
    started = time.perf_counter()
    it = 0
    bar = tqdm(total=total, desc="dream", unit="step", disable=bar_off(progress, not ranks.main), leave=False)
    while it < total:
        whole = torch.randint(len(frames), (batch,), generator=generator)
        scale = ranks.scale(len(whole))
        rows = ranks.split(whole)
        lr = schedules.warmup_cosine(it, total, cfg.warmup_steps, 0.0, cfg.lr, 0.1 * cfg.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast:
            loss = objective(frames[rows.to(frames.device)].to(device), conds[rows.to(device)],
                             scheduler, cfg, generator, ranks, len(whole)) * scale
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.step(model.parameters())
        global_step += 1
        it += 1
        bar.update(1)
        if it == 1:
            _sync(device)
            first_done = time.perf_counter()
        if it == PROJECT_AFTER and cfg.max_minutes and total > it:
            _sync(device)
            # A CPU, or a GPU smaller than the config assumes: fit the night into the budget
            # rather than run for a day. The schedule is a function of (step, total), so it
            # simply ends sooner.
            per_step = (time.perf_counter() - first_done) / (it - 1)
            fits = max(it + 1, int(cfg.max_minutes * 60 / per_step))
            if fits < total:
                budget_cut = (f"{total} steps would take {total * per_step / 60:.0f} min at {per_step:.2f} s a step; "
                              f"ran {fits} to stay within dream.max_minutes = {cfg.max_minutes:g}")
                log.warning("dream: %s", budget_cut)
                total = fits
                bar.total = total
        if it % cfg.log_every == 0 or it == total:
            losses.append(round(ranks.mean(loss.detach()).item(), 5))
            log.info("dream step %d/%d: loss %.4f", it, total, losses[-1])
    bar.close()
    _sync(device)
    seconds = time.perf_counter() - started
    model.eval()
    return DreamTrainResult(model, ema, optimizer, global_step, total, seconds,
                            total * batch / seconds if seconds > 0 else 0.0, losses, budget_cut)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
