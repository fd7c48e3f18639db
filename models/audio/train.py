"""The nightly CPC loop: random crops of the night's log-mel frames, AdamW, a warm-up and
cosine schedule that is a pure function of the step, then evaluation and embedding.

A night that continues last night's model also distils it, as CaSSLe does
(:mod:`models.distill`): a frozen copy of last night's model embeds each batch (pooled
context vectors, what the memory stores), a fresh predictor maps tonight's pooled context
onto them, and ``distill_weight * (2 - 2 cos)`` is added to InfoNCE. The predictor is new
each night and never saved (:meth:`CpcTrainResult.optimizer_state`).
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from core.config import CpcConfig
from core.progress import bar_off
from models.audio.cpc import CpcModel, chance_loss
from models.checkpoint import restore_training
from models.distill import (
    DistillPredictor,
    distill_loss,
    predictor_groups,
    without_distill_groups,
)
from models.distributed import current

log = logging.getLogger(__name__)

# Keys whose change makes an old checkpoint's weights unusable (shapes or meaning differ).
ARCHITECTURE_KEYS = ("sample_rate", "n_mels", "n_fft", "hop_length", "encoder_channels",
                     "encoder_layers", "encoder_stride", "context_hidden", "predict_steps")


def architecture_of(cfg: CpcConfig | dict) -> dict:
    data = cfg if isinstance(cfg, dict) else cfg.model_dump()
    return {k: data[k] for k in ARCHITECTURE_KEYS}


# -- schedule and data ------------------------------------------------------------------------

def get_lr(it: int, total: int, cfg: CpcConfig) -> float:
    """Linear warm-up then cosine decay to ``min_lr_ratio * lr`` over the night's steps."""
    if it < cfg.warmup_steps:
        return cfg.lr * (it + 1) / cfg.warmup_steps
    span = max(1, total - cfg.warmup_steps)
    progress = min(1.0, (it - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def crop_frames(cfg: CpcConfig) -> int:
    """Mel frames in one training crop of ``window_s`` seconds."""
    return max(1, round(cfg.window_s * cfg.sample_rate / cfg.hop_length))


def night_steps(pool_seconds: float, cfg: CpcConfig) -> int:
    """``epochs`` passes over the pool in crops, clamped to ``[min_steps, max_steps]``."""
    wanted = math.ceil(cfg.epochs * pool_seconds / (cfg.window_s * cfg.batch_size))
    return int(min(cfg.max_steps, max(cfg.min_steps, wanted)))


class CropSampler:
    """Batches of random fixed-length crops from a pool of log-mel features.

    Args:
        features: ``(n_mels, frames)`` tensors, each at least ``frames`` long.
        frames: crop length in mel frames.
        batch_size: crops per batch.
        generator: a seeded CPU generator.
    """

    def __init__(self, features: list[torch.Tensor], frames: int, batch_size: int,
                 generator: torch.Generator):
        if not features:
            raise ValueError("no segment is long enough for one crop")
        self.features, self.frames, self.batch_size, self.generator = features, frames, batch_size, generator
        self.lengths = torch.tensor([f.shape[1] for f in features])

    def __call__(self) -> torch.Tensor:
        which = torch.randint(0, len(self.features), (self.batch_size,), generator=self.generator)
        room = self.lengths[which] - self.frames + 1
        starts = (torch.rand(self.batch_size, generator=self.generator) * room).long()
        crops = [self.features[i][:, s:s + self.frames] for i, s in zip(which.tolist(), starts.tolist())]
        return torch.stack(crops).float()  # (B, n_mels, frames)


# -- the loop -------------------------------------------------------------------------------

def make_optimizer(model: CpcModel, cfg: CpcConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices and kernels only, not on biases or norms."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.999))


@dataclass
class CpcTrainResult:
    """What a night's training produced: the model, its optimizer and its curve."""

    model: CpcModel
    optimizer: torch.optim.Optimizer
    step: int                      # global step over all nights
    steps: int                     # this night's
    seconds: float
    audio_seconds: float           # seconds of audio in the crops seen tonight
    history: list[dict] = field(default_factory=list)  # logged steps; "distill" too when distilled
    distilled: bool = False        # last night's model was distilled into tonight's

    @property
    def audio_per_second(self) -> float:
        return self.audio_seconds / self.seconds if self.seconds > 0 else float("nan")

    def optimizer_state(self) -> dict:
        """The optimizer's state to checkpoint: without the distillation predictor's groups,
        so that the next night's optimizer (built without them) loads it."""
        return without_distill_groups(self.optimizer.state_dict())


def autocast_for(device: str, cfg: CpcConfig):
    use = cfg.bf16 and torch.device(device).type == "cuda"
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=use)


def train_cpc(features: list[torch.Tensor], cfg: CpcConfig, device: str, *, seed: int = 0,
              resume: dict | None = None, steps: int | None = None,
              progress: bool = True) -> CpcTrainResult:
    """Train (or continue training) CPC on a pool of log-mel features.

    Args:
        features: ``(n_mels, frames)`` float16 tensors; those shorter than one crop are
            left out (the caller has already left out clips without audio).
        cfg: the CPC config.
        device: ``cpu`` or ``cuda``.
        seed: seeds the crops and negatives (the stage passes runtime.seed + the date).
        resume: a checkpoint dict from last night (model, optimizer, step) or ``None``;
            with it and ``cfg.distill_weight > 0`` the night distils last night's model.
        steps: overrides :func:`night_steps` (tests, the benchmark).
        progress: show a tqdm bar.
    Returns:
        a :class:`CpcTrainResult`.
    """
    torch.manual_seed(seed)
    model = CpcModel(cfg).to(device)
    optimizer = make_optimizer(model, cfg)
    global_step = restore_training(resume, model, optimizer)
    old, predictor = None, None
    if resume is not None and cfg.distill_weight > 0:
        old = copy.deepcopy(model).requires_grad_(False).eval()  # last night's, frozen
        predictor = DistillPredictor(cfg.context_hidden, cfg.distill_hidden).to(device)
        for group in predictor_groups(predictor, cfg.weight_decay):
            optimizer.add_param_group(group)
    trained = [p for group in optimizer.param_groups for p in group["params"]]
    frames = crop_frames(cfg)
    if frames < model.min_frames():
        raise ValueError(f"models.cpc.window_s: {cfg.window_s}s gives {frames} mel frames; predicting "
                         f"{cfg.predict_steps} steps needs at least {model.min_frames()}")
    pool = [f for f in features if f.shape[1] >= frames]
    if len(pool) < len(features):
        log.info("cpc: %d of %d segments are shorter than one %.2fs crop and are not trained on",
                 len(features) - len(pool), len(features), cfg.window_s)
    pool_seconds = sum(f.shape[1] for f in pool) * cfg.hop_length / cfg.sample_rate
    total = steps if steps is not None else night_steps(pool_seconds, cfg)
    sampler = CropSampler(pool, frames, cfg.batch_size, torch.Generator().manual_seed(seed))
    negatives_gen = torch.Generator(device=device).manual_seed(seed + 1)
    log.info("cpc: %d steps of %d x %.2fs crops from %d segments (%.0fs of audio), negatives=%s x %d, "
             "from step %d%s", total, cfg.batch_size, cfg.window_s, len(pool), pool_seconds,
             cfg.negatives, cfg.n_negatives, global_step,
             f", distilling last night's model (weight {cfg.distill_weight:g})" if old else "")

    model.train()
    # Under torchrun each process trains on its slice of every batch (models.distributed):
    # crops and negatives are drawn for the whole batch, so N processes take one process's step.
    ranks = current()
    network = ranks.wrap(model)
    history: list[dict] = []
    started = time.perf_counter()
    bar = tqdm(range(total), desc="cpc", unit="step", disable=bar_off(progress, not ranks.main), leave=False)
    for it in bar:
        lr = get_lr(it, total, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        whole = sampler()
        scale = ranks.scale(len(whole))
        mel = ranks.split(whole).to(device, non_blocking=True)
        with autocast_for(device, cfg):
            out = network(mel, generator=negatives_gen, ranks=ranks, rows=len(whole))
            loss = out.loss * scale
            if old is not None:
                distill = distill_loss(predictor(out.pooled), old.embed(mel)) * scale  # (B, H) vs (B, H)
                loss = loss + cfg.distill_weight * distill
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if predictor is not None:
            ranks.sync_gradients(predictor)
        torch.nn.utils.clip_grad_norm_(trained, cfg.grad_clip)
        optimizer.step()
        global_step += 1
        if it % cfg.log_every == 0 or it == total - 1:
            entry = {"step": global_step, "loss": ranks.mean(out.loss.detach() * scale).item(), "lr": lr,
                     "accuracy": ranks.mean(out.accuracy_per_step.mean()).item()}
            if old is not None:
                entry["distill"] = ranks.mean(distill.detach()).item()
            history.append(entry)
            bar.set_postfix(loss=f"{entry['loss']:.3f}")
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return CpcTrainResult(model, optimizer, global_step, total, seconds,
                          total * cfg.batch_size * frames * cfg.hop_length / cfg.sample_rate, history,
                          distilled=old is not None)


@torch.no_grad()
def evaluate_cpc(model: CpcModel, features: list[torch.Tensor], cfg: CpcConfig, device: str, *,
                 seed: int = 0) -> dict | None:
    """CPC loss and per-step accuracy on non-overlapping crops of ``features``.

    Returns:
        ``{"loss", "loss_per_step", "accuracy_per_step", "chance_loss", "chance_accuracy",
        "crops"}``, or ``None`` when no crop fits.
    """
    frames = crop_frames(cfg)
    crops = [f[:, s:s + frames] for f in features for s in range(0, f.shape[1] - frames + 1, frames)]
    if not crops or (cfg.negatives == "other_sequences" and len(crops) < 2):
        return None
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    loss_sum = torch.zeros(cfg.predict_steps)
    acc_sum = torch.zeros(cfg.predict_steps)
    n = 0
    for start in range(0, len(crops), cfg.batch_size):
        batch = crops[start:start + cfg.batch_size]
        if cfg.negatives == "other_sequences" and len(batch) < 2:
            batch = crops[-2:]  # a batch of one has no other sequence to draw from
        mel = torch.stack(batch).float().to(device)
        with autocast_for(device, cfg):
            out = model(mel, generator=generator)
        loss_sum += out.loss_per_step.float().cpu() * len(batch)
        acc_sum += out.accuracy_per_step.float().cpu() * len(batch)
        n += len(batch)
    model.train()
    loss = (loss_sum / n).tolist()
    return {"loss": float(np.mean(loss)), "loss_per_step": loss, "accuracy_per_step": (acc_sum / n).tolist(),
            "chance_loss": chance_loss(cfg.n_negatives), "chance_accuracy": 1 / (1 + cfg.n_negatives),
            "crops": len(crops)}


@torch.no_grad()
def embed_features(model: CpcModel, features: list[torch.Tensor], cfg: CpcConfig,
                   device: str) -> tuple[np.ndarray, list[int]]:
    """Pooled context vectors of whole segments.

    Args:
        model: a trained :class:`CpcModel`.
        features: ``(n_mels, frames)`` tensors of any length.
    Returns:
        ``(vectors (M, H) float32, kept)``: ``kept`` lists the indices of ``features``
        embedded (a segment too short to give one encoded step is left out).
    """
    model.eval()
    by_length: dict[int, list[int]] = {}
    for i, f in enumerate(features):
        if model.encoder.steps(f.shape[1]) >= 1:
            by_length.setdefault(f.shape[1], []).append(i)
    vectors: dict[int, np.ndarray] = {}
    for indices in by_length.values():
        for start in range(0, len(indices), cfg.embed_batch_size):
            chunk = indices[start:start + cfg.embed_batch_size]
            mel = torch.stack([features[i] for i in chunk]).float().to(device)
            with autocast_for(device, cfg):
                emb = model.embed(mel).float().cpu().numpy()
            for j, i in enumerate(chunk):
                vectors[i] = emb[j]
    kept = sorted(vectors)
    out = np.stack([vectors[i] for i in kept]) if kept else np.zeros((0, model.embedding_dim), np.float32)
    return out.astype(np.float32), kept
