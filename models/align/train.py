"""Train the alignment heads on one night's (vision, audio) pairs, and measure retrieval.

The loop follows open_clip's ``train_one_epoch``: AdamW with no weight decay on biases,
gains or the logit scale, a warm-up and cosine schedule that is a pure function of the
step, and the logit scale clamped to ``[0, ln 100]`` after every optimizer step.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
from tqdm import tqdm

from core.config import AlignConfig
from core.progress import bar_off
from models.align.heads import AlignModel
from models.batches import TrainResult, night_batches
from models.checkpoint import restore_training
from models.distributed import current
from models.retrieval import retrieval_metrics

log = logging.getLogger(__name__)


def get_lr(it: int, total: int, cfg: AlignConfig) -> float:
    """Linear warm-up, then cosine decay to zero over the night's steps."""
    if it < cfg.warmup_steps:
        return cfg.lr * (it + 1) / cfg.warmup_steps
    progress = min(1.0, (it - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))


def make_optimizer(model: AlignModel, cfg: AlignConfig) -> torch.optim.AdamW:
    """Decay weight matrices only: open_clip excludes biases, norm gains and ``logit_scale``."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)


def _unit(x: np.ndarray, device: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)
    return torch.nn.functional.normalize(t, dim=-1)


def train_alignment(vision: np.ndarray, audio: np.ndarray, cfg: AlignConfig, device: str, *,
                    seed: int = 0, resume: dict | None = None, steps: int | None = None,
                    progress: bool = True) -> TrainResult:
    """Fit the two projection heads so that a clip's vision and audio vectors meet.

    Args:
        vision: ``(N, Dv)`` vision embeddings; row i pairs with ``audio[i]``.
        audio: ``(N, Da)`` audio embeddings of the same clips.
        cfg: the alignment config.
        device: ``cpu`` or ``cuda``.
        seed: seeds initialisation and batch order.
        resume: last night's checkpoint dict (``model``, ``optimizer``, ``step``) when
            its shapes fit; ``None`` starts fresh.
        steps: overrides :func:`models.batches.night_steps`.
        progress: show a tqdm bar.
    Returns:
        a :class:`models.batches.TrainResult` (its ``model`` an :class:`AlignModel`).
    """
    n = len(vision)
    if n != len(audio):
        raise ValueError(f"{n} vision vectors but {len(audio)} audio vectors")
    if n < 2:
        raise ValueError("alignment needs at least two pairs (one positive, one negative)")
    torch.manual_seed(seed)
    model = AlignModel(vision.shape[1], audio.shape[1], cfg).to(device)
    optimizer = make_optimizer(model, cfg)
    global_step = restore_training(resume, model, optimizer)
    v, a = _unit(vision, device), _unit(audio, device)
    total, batches = night_batches(n, cfg, seed, steps)
    history: list[dict] = []
    model.train()
    # Under torchrun each process scores its slice of every batch against the whole batch
    # (models.distributed); one process's step, shared.
    ranks = current()
    network = ranks.wrap(model)
    started = time.perf_counter()
    for it in tqdm(range(total), desc="align", unit="step", disable=bar_off(progress, not ranks.main), leave=False):
        whole = next(batches)
        scale = ranks.scale(len(whole))
        idx = ranks.split(whole).to(device)
        lr = get_lr(it, total, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = network(v[idx], a[idx], ranks, len(whole)) * scale
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.clamp_logit_scale()
        global_step += 1
        if it % 10 == 0 or it == total - 1:
            history.append({"step": global_step, "loss": ranks.mean(loss.detach()).item(), "lr": lr,
                            "logit_scale": model.logit_scale.exp().item()})
    seconds = time.perf_counter() - started
    log.info("align: %d steps on %d pairs in %.1fs, final loss %.3f, logit scale %.1f", total, n,
             seconds, history[-1]["loss"], history[-1]["logit_scale"])
    return TrainResult(model, optimizer, global_step, total, seconds, history)


@torch.no_grad()
def project(model: AlignModel, vectors: np.ndarray, modality: str, device: str,
            batch_size: int = 4096) -> np.ndarray:
    """Map one sense's vectors into the shared space: ``(N, D_in)`` -> ``(N, dim)`` float32."""
    model.eval()
    out = [model.project(_unit(vectors[i:i + batch_size], device), modality).float().cpu().numpy()
           for i in range(0, len(vectors), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.dim), np.float32)


def evaluate_alignment(model: AlignModel, vision: np.ndarray, audio: np.ndarray, device: str) -> dict:
    """Audio->video and video->audio retrieval among the given (held-out) pairs.

    Returns:
        ``{"audio_to_video": {...}, "video_to_audio": {...}}``, each as
        :func:`models.retrieval.retrieval_metrics` (with chance).
    """
    v = project(model, vision, "vision", device)
    a = project(model, audio, "audio", device)
    return {"audio_to_video": retrieval_metrics(a, v), "video_to_audio": retrieval_metrics(v, a)}
