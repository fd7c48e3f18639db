"""The nightly I-JEPA trainer: data, model, optimizer, schedule, the step, checkpoint.

Each night continues from the checkpoint its stage hands in (the stage decides whether last
night's still fits: ``stages.common.resume_state``), trains ``steps`` optimizer steps on the
day's frames mixed with a replay sample of earlier days, and writes
``checkpoints/jepa/{date}.pt``. Learning rate, weight decay and EMA momentum
restart their schedules each night (a night is one run over its own data); they and the
masks are pure functions of the step, so nothing but the step is needed to resume.

A night that continues a checkpoint also distils, as CaSSLe does, last night's frozen
encoder into tonight's (``models.jepa.distill_weight``; :meth:`JEPA.start_distillation`):
its predictor is fresh each night and is left out of the checkpoint, optimizer moments
included, so every checkpoint has the same shape whether the night distilled or not.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm import tqdm

from core.config import JepaConfig
from core.progress import bar_off
from models import schedules
from models.checkpoint import CheckpointError, save_checkpoint
from models.distill import predictor_groups, without_distill_groups
from models.distributed import current
from models.ema import EMA
from models.vision.frames import BatchGatherer, normalise, random_resized_crop
from models.vision.jepa import JEPA
from models.vision.masks import MaskBatch, MultiBlockMaskCollator
from models.vision.vit import VisionTransformer

log = logging.getLogger(__name__)

# Attention kernels for training: every one but cuDNN's. Measured on an H200 with torch 2.11
# (default config, bf16, the demo day, 700 steps, eager): with cuDNN's kernel, which torch
# picks there for bf16, 12 steps had a gradient that was not finite and the first ~150 steps
# crawled (the token counts change every step and cuDNN builds a graph per shape): 2,265
# images/s; without it, 0 such steps and 4,009 images/s.
TRAINING_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
CHECKPOINT_KEYS = ("model", "optimizer", "ema", "rng", "step", "config")


def param_groups(model: JEPA, weight_decay: float) -> list[dict]:
    """AdamW groups: weights decay; biases and LayerNorm gains (1-D tensors) do not.

    The target encoder is left out: it is never trained, only averaged.
    """
    decay, no_decay = [], []
    for module in (model.encoder, model.predictor):
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim == 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "decay": True},
            {"params": no_decay, "weight_decay": 0.0, "decay": False}]


def _generator(seed: int, step: int) -> torch.Generator:
    # One fresh generator per step: crops and batch rows depend on (seed, step) only.
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


class JepaTrainer:
    """Model, optimizer, EMA and masks for I-JEPA, and one training step.

    Args:
        cfg: the ``models.jepa`` config.
        device: ``"cpu"`` or ``"cuda"``.
    """

    def __init__(self, cfg: JepaConfig, device: str):
        self.cfg = cfg
        self.device = torch.device(device)
        # Under torchrun each process trains on its slice of every batch (models.distributed).
        self.ranks = current()
        torch.manual_seed(cfg.seed)
        self.model = JEPA(cfg).to(self.device)
        self.ema = EMA(self.model.target_encoder)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay[0]), lr=cfg.lr,
                                           fused=self.device.type == "cuda")
        self.masks = MultiBlockMaskCollator(self.model.encoder.grid, cfg.num_targets, cfg.target_scale,
                                            cfg.target_aspect, cfg.context_scale, cfg.min_keep, cfg.seed,
                                            static=cfg.static_masks)
        self.global_step = 0
        # Steps whose gradient was not finite (skipped by _clip_or_skip), on the device.
        self.skipped = torch.zeros((), dtype=torch.int64, device=self.device)
        self.grad_norm = torch.zeros((), device=self.device)  # the last step's, before clipping
        on_cuda = self.device.type == "cuda"
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda and cfg.bf16
                         else contextlib.nullcontext())
        self.compile = on_cuda and cfg.compile
        # The model, under DDP when several processes train together (wrapped at the first
        # step, after a distillation predictor may have joined it). Context and target sizes
        # change from step to step; after the first change dynamo recompiles once with
        # dynamic token counts instead of once per shape (with models.jepa.static_masks they
        # never change: one graph of fixed shapes).
        self.network: torch.nn.Module = self.model
        self.loss_fn = self._compiled(self.model) if self.compile else self.model
        # Why the compiled loss was given up for eager mode tonight, if it was (see _loss).
        self.compile_fallback: str | None = None

    def _compiled(self, network: torch.nn.Module):
        # Static masks give every step the same shapes: one graph, never a dynamic one.
        return torch.compile(network, dynamic=False if self.cfg.static_masks else None)

    # -- checkpoint ------------------------------------------------------------------------
    def state_dict(self, date: dt.date) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "model": {"encoder": self.model.encoder.state_dict(),
                      "predictor": self.model.predictor.state_dict()},
            "optimizer": without_distill_groups(self.optimizer.state_dict()),
            "ema": self.ema.state_dict(),
            "rng": rng,
            "step": self.global_step,
            "date": date.isoformat(),
            "config": self.cfg.model_dump(mode="json"),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint of the same network shape (the stage has checked it).

        Raises:
            CheckpointError: the weights do not load.
        """
        try:
            self.model.encoder.load_state_dict(state["model"]["encoder"])
            self.model.predictor.load_state_dict(state["model"]["predictor"])
            self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.global_step = int(state["step"])
            torch.set_rng_state(state["rng"]["torch"])
        except (KeyError, RuntimeError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            raise CheckpointError(f"last night's jepa checkpoint does not load ({reason})") from None

    def start_distillation(self) -> None:
        """Distil from here on against the encoder as it stands (call after
        :meth:`load_state_dict`): freeze a copy and train a fresh predictor with the rest."""
        predictor = self.model.start_distillation(self.cfg.distill_hidden)
        for group in predictor_groups(predictor, self.cfg.weight_decay[0]):
            self.optimizer.add_param_group(group)

    @property
    def distilling(self) -> bool:
        return self.model.old_encoder is not None

    # -- one step ------------------------------------------------------------------------
    def step(self, batch: torch.Tensor, night_step: int, night_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on a batch of uint8 frames already on the device.

        Args:
            batch: ``(B, 3, S, S)`` uint8.
            night_step: 0-based step within tonight's run (drives the schedules).
            night_steps: steps in tonight's run.
        Returns:
            ``(loss, distill)``: the I-JEPA loss and the (unweighted) distillation loss, 0-d
            tensors on the device (not synchronised); ``distill`` is 0 when not distilling.
        """
        cfg = self.cfg
        lr = schedules.warmup_cosine(night_step, night_steps, cfg.warmup_steps, cfg.start_lr, cfg.lr,
                                     cfg.final_lr)
        wd = schedules.cosine(night_step, night_steps, *cfg.weight_decay)
        momentum = schedules.linear(night_step, night_steps, *cfg.ema_momentum)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if group["decay"]:
                group["weight_decay"] = wd

        generator = _generator(cfg.seed, self.global_step)
        images = random_resized_crop(normalise(batch), cfg.crop_scale, generator)
        masks = self.masks(batch.shape[0], self.global_step)
        # Crops and masks are drawn for the whole batch, then each process keeps its slice:
        # N processes take the very step one process would.
        images = self.ranks.split(images)
        masks = MaskBatch(self.ranks.split(masks.context), self.ranks.split(masks.targets, dim=1))
        if self.device.type == "cuda":
            masks = masks.pin_memory()
        masks = masks.to(self.device, non_blocking=True)

        if self.ranks.distributed and self.network is self.model:
            self.network = self.ranks.wrap(self.model)
            self.loss_fn = self._compiled(self.network) if self.compile else self.network
        loss, distill = self._loss(images, masks, self.ranks.scale(batch.shape[0]))
        loss, distill = self.ranks.mean(loss), self.ranks.mean(distill)
        self._clip_or_skip()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.model.encoder, momentum)
        self.global_step += 1
        return loss.detach(), distill.detach()

    def _clip_or_skip(self) -> None:
        """Clip the gradient norm to ``cfg.grad_clip``; a step whose gradient is not finite
        becomes a step with a zero gradient, counted in :attr:`skipped`.

        Measured on an H200 (torch 2.11, bf16, default config, the demo day's 19 frames):
        without the skip, the night's loss turned NaN between steps 450 and 650 and the
        vision stage failed. Those were single steps (7 of 2,000, the gradient norm 0.02 to
        0.1 around them, far under the clip), traced to cuDNN's attention kernel, which
        training no longer uses (:data:`TRAINING_ATTENTION`); the guard stays for any other.
        Everything stays on the device: a host sync every step would stall the GPU.
        """
        trained = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not trained:
            return
        limit = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(trained, limit)
        self.grad_norm = norm.detach()  # before clipping; read at log lines only
        finite = torch.isfinite(norm)
        self.skipped += (~finite).to(self.skipped.dtype)
        # A non-finite norm makes clip_grad_norm_ scale every gradient by NaN or 0: zero them.
        for p in trained:
            p.grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)

    def _loss(self, images: torch.Tensor, masks, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward of ``jepa + distill_weight * distill``; a compiler failure
        falls back to eager mode for the night.

        Inductor has shape-specialisation bugs with the changing token counts in some torch
        releases (2.9.1 on CPU asserts a saved tensor's stride in the backward of the first
        dynamic graph; 2.11 does not), and a night must not be lost to one. The failure
        comes before ``optimizer.step``, so redoing the step eagerly changes nothing else.
        """
        try:
            return self._backward(self.loss_fn, images, masks, scale)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # any compiler error: eager mode is the same maths
            if self.loss_fn is self.network:
                raise
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            self.compile_fallback = f"step {self.global_step}: {type(exc).__name__}: {first_line}"
            log.warning("jepa: torch.compile failed at step %d (%s: %s); continuing in eager mode",
                        self.global_step, type(exc).__name__, first_line)
            self.loss_fn = self.network
            self.optimizer.zero_grad(set_to_none=True)
            return self._backward(self.loss_fn, images, masks, scale)

    def _backward(self, loss_fn, images: torch.Tensor, masks, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        # The backward runs the kernels the forward chose, so the choice of attention
        # kernels here holds for both.
        with self.autocast, sdpa_kernel(TRAINING_ATTENTION):
            loss, distill = loss_fn(images, masks.context, masks.targets)
        # Weighted here, outside the network: the compiled graph does not depend on the weight.
        # ``scale`` weighs this process's slice by its size (models.distributed.Ranks.scale).
        loss, distill = loss * scale, distill * scale
        (loss + self.cfg.distill_weight * distill).backward()
        return loss, distill


@dataclass
class TrainResult:
    """What one night of training produced."""

    target_encoder: VisionTransformer  # the EMA encoder, on the device, in eval mode
    losses: list[float]  # the I-JEPA loss of every step
    distill_losses: list[float] | None  # the distillation loss of every step; None: not distilled
    steps: int
    global_step: int
    checkpoint: str
    seconds: float
    images_per_second: float  # after the first steps (compilation) are done
    compiled: bool  # the loss ran through torch.compile to the end of the night
    compile_fallback: str | None  # why compilation was given up mid-night, if it was
    skipped_steps: int = 0  # steps whose gradient was not finite (their loss is NaN or inf in ``losses``)


def train_night(cfg: JepaConfig, frames: torch.Tensor, replay: torch.Tensor | None, *,
                date: dt.date, checkpoint_dir: Path, device: str, resume: dict | None = None,
                progress: bool = True) -> TrainResult:
    """Train tonight's I-JEPA steps and write ``{checkpoint_dir}/{date}.pt``.

    Args:
        cfg: the ``models.jepa`` config.
        frames: ``(N, 3, S, S)`` uint8 cache of today's training frames.
        replay: ``(R, 3, S, S)`` uint8 frames of earlier days, or ``None``/empty.
        date: the night's date (names the checkpoint).
        checkpoint_dir: ``checkpoints/jepa``.
        device: ``"cpu"`` or ``"cuda"``.
        resume: last night's checkpoint (:data:`CHECKPOINT_KEYS`) when its shape fits
            tonight's config; ``None`` starts from scratch. With it and
            ``cfg.distill_weight > 0`` the night distils last night's encoder.
        progress: show a tqdm bar.
    Returns:
        a :class:`TrainResult` with the loss of every step.
    Raises:
        CheckpointError: ``resume``'s weights do not load.
        ValueError: no frames to train on.
    """
    if frames.shape[0] == 0:
        raise ValueError("no frames to train on")
    trainer = JepaTrainer(cfg, device)
    if resume is not None:
        trainer.load_state_dict(resume)
        log.info("jepa: continuing at step %d", trainer.global_step)
        if cfg.distill_weight > 0:
            trainer.start_distillation()
            log.info("jepa: distilling last night's encoder (weight %g)", cfg.distill_weight)

    gpu_max = cfg.gpu_cache_max_gb * 2**30
    today = BatchGatherer(frames, device, cfg.batch_size, gpu_max)
    earlier = BatchGatherer(replay, device, cfg.batch_size, gpu_max) if replay is not None and len(replay) else None
    n_replay = int(round(cfg.batch_size * cfg.replay_fraction)) if earlier else 0
    n_today = cfg.batch_size - n_replay

    steps = cfg.steps
    losses = torch.zeros(steps, device=trainer.device)
    distill_losses = torch.zeros(steps, device=trainer.device)
    warm = min(10, steps // 5)
    started = time.perf_counter()
    warm_time = started
    trainer.model.train()
    skipped_logged = step_logged = 0
    for i in tqdm(range(steps), desc="jepa", unit="step", disable=bar_off(progress, not trainer.ranks.main), leave=False):
        rows = torch.randint(len(today), (n_today,), generator=_generator(cfg.seed + 1, trainer.global_step))
        batch = today.gather(rows)
        if n_replay:
            rows = torch.randint(len(earlier), (n_replay,), generator=_generator(cfg.seed + 2, trainer.global_step))
            batch = torch.cat([batch, earlier.gather(rows)])
        losses[i], distill_losses[i] = trainer.step(batch, i, steps)
        if i + 1 == warm:
            _sync(trainer.device)
            warm_time = time.perf_counter()
        if (i + 1) % cfg.log_every == 0 or i + 1 == steps:
            value, distill = float(losses[i]), float(distill_losses[i])  # synchronise; only every log_every steps
            skipped = int(trainer.skipped)
            if skipped - skipped_logged == i + 1 - step_logged:
                raise FloatingPointError(
                    f"jepa: the gradient was not finite at every step from {step_logged + 1} to {i + 1} "
                    f"(loss {value}); lower models.jepa.lr (now {cfg.lr:g}), or set models.jepa.bf16: false")
            if skipped > skipped_logged:
                log.warning("jepa: %d step(s) up to step %d had a gradient that was not finite and were skipped",
                            skipped - skipped_logged, i + 1)
            skipped_logged, step_logged = skipped, i + 1
            log.info("jepa step %d/%d (global %d): loss %.4f, gradient norm %.3g%s", i + 1, steps,
                     trainer.global_step, value, float(trainer.grad_norm),
                     f", distill {distill:.4f}" if trainer.distilling else "")
    _sync(trainer.device)
    ended = time.perf_counter()
    timed_steps = steps - warm
    ips = timed_steps * cfg.batch_size / (ended - warm_time) if timed_steps > 0 else 0.0

    # One writer: every rank holds the same weights.
    path = save_checkpoint(checkpoint_dir, date, trainer.state_dict(date)) if trainer.ranks.main else ""
    target = trainer.model.target_encoder.eval()
    return TrainResult(target, [float(v) for v in losses.cpu()],
                       [float(v) for v in distill_losses.cpu()] if trainer.distilling else None,
                       steps, trainer.global_step, str(path),
                       ended - started, ips,
                       compiled=trainer.loss_fn is not trainer.network,
                       compile_fallback=trainer.compile_fallback,
                       skipped_steps=int(trainer.skipped))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
