"""Train the sparse autoencoder on one night's vectors, measure it, and encode with it.

Adam with a warm-up and cosine schedule that is a pure function of the step (as every
nightly trainer here), ``epochs`` shuffled passes over the vectors; after each step the
decoder's columns go back to unit norm and the part of their gradient that only changes
that norm is removed first (openai/sparse_autoencoder ``training_loop_``).
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch
from tqdm import tqdm

from core.config import SaeConfig
from core.progress import bar_off
from models import schedules
from models.batches import TrainResult, night_batches
from models.checkpoint import restore_training
from models.distributed import current
from models.sae.autoencoder import SparseAutoencoder, fraction_of_variance_unexplained

log = logging.getLogger(__name__)


def build(n_inputs: int, cfg: SaeConfig) -> SparseAutoencoder:
    return SparseAutoencoder(n_inputs, cfg.latents, cfg.k, cfg.aux_k, cfg.dead_steps, kind=cfg.kind)


def train_sae(vectors: np.ndarray, cfg: SaeConfig, device: str, *, seed: int = 0,
              resume: dict | None = None, steps: int | None = None, progress: bool = True) -> TrainResult:
    """Fit the autoencoder to ``(N, D)`` vectors.

    Args:
        vectors: tonight's training vectors (float32).
        cfg: the ``models.sae`` config.
        device: ``cpu`` or ``cuda``.
        seed: seeds initialisation and batch order.
        resume: last night's checkpoint (``model``, ``optimizer``, ``step``) when its shapes
            fit; ``None`` starts fresh, with the pre-encoder bias at the vectors' median.
        steps: overrides :func:`models.batches.night_steps`.
        progress: show a tqdm bar.
    Raises:
        ValueError: fewer than two vectors.
    """
    n = len(vectors)
    if n < 2:
        raise ValueError("the sparse autoencoder needs at least two vectors")
    x = torch.as_tensor(np.asarray(vectors, dtype=np.float32), device=device)
    torch.manual_seed(seed)
    model = build(x.shape[1], cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    global_step = restore_training(resume, model, optimizer)
    if resume is None:
        with torch.no_grad():  # centre the dictionary on the data (a cheap geometric median)
            model.pre_bias.copy_(x.median(dim=0).values)

    total, batches = night_batches(n, cfg, seed, steps)
    history: list[dict] = []
    model.train()
    # Under torchrun each process trains on its slice of every batch (models.distributed).
    # The losses divide by the whole batch's variance, so N processes take one process's
    # step (batchtopk aside: its top k x B is per slice).
    ranks = current()
    network = ranks.wrap(model, find_unused=cfg.aux_k > 0)  # AuxK's path is idle while no neuron is dead
    started = time.perf_counter()
    for it in tqdm(range(total), desc="sae", unit="step", disable=bar_off(progress, not ranks.main), leave=False):
        whole = next(batches)
        scale = ranks.scale(len(whole))
        idx = ranks.split(whole).to(device)
        lr = schedules.warmup_cosine(it, total, cfg.warmup_steps, 0.0, cfg.lr, 0.1 * cfg.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        mse, parts = network(x[idx], ranks, len(whole))
        loss = (mse + cfg.aux_coef * parts["aux"] + cfg.l1_coef * parts["l1"]) * scale
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        model.remove_parallel_decoder_grad_()
        optimizer.step()
        model.normalise_decoder_()
        global_step += 1
        if it % 10 == 0 or it == total - 1:
            history.append({"step": global_step, "mse": ranks.mean(mse.detach()).item(),
                            "aux": ranks.mean(parts["aux"].detach()).item(),
                            "l1": ranks.mean(parts["l1"].detach()).item(),
                            "l0": ranks.mean((parts["latents"] > 0).sum(1).float().mean()).item(),
                            "dead": float(model.dead_mask().float().mean()), "lr": lr})
    seconds = time.perf_counter() - started
    model.eval()
    log.info("sae (%s): %d steps on %d vectors in %.1fs, normalised MSE %.3f, L0 %.1f, dead %.1f%%", cfg.kind,
             total, n, seconds, history[-1]["mse"], history[-1]["l0"], 100 * history[-1]["dead"])
    return TrainResult(model, optimizer, global_step, total, seconds, history)


@torch.no_grad()
def encode(model: SparseAutoencoder, vectors: np.ndarray, device: str, batch_size: int = 4096) -> np.ndarray:
    """``(N, D)`` vectors -> ``(N, latents)`` float32 activations (eval mode: at most ``k``
    non-zero per row for topk, about ``k`` on average for batchtopk, L1-sparse for l1)."""
    model.eval()
    out = [model.encode(torch.as_tensor(np.asarray(vectors[i:i + batch_size], dtype=np.float32),
                                        device=device)).cpu().numpy()
           for i in range(0, len(vectors), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.n_latents), np.float32)


def evaluate(model: SparseAutoencoder, vectors: np.ndarray, activations: np.ndarray, device: str,
             rows_label: str | None = None) -> dict:
    """How well the dictionary describes ``vectors`` (held out, when there are enough).

    Args:
        model: the trained autoencoder.
        vectors: the rows to measure reconstruction and sparsity on.
        activations: ``(N, latents)`` codes of the rows to count firing neurons over
            (the stage passes every row of tonight).
        device: where ``vectors`` are encoded.
        rows_label: what ``activations``' rows are, for ``dead_window``.
    Returns:
        ``fvu`` (fraction of variance unexplained over ``vectors``, 0 = perfect) and
        ``explained_variance`` (``1 - fvu``); ``mean_l0`` (mean non-zero neurons per row of
        ``vectors``); ``active_per_vector`` (the same over ``activations``' rows);
        ``neurons_used``; two dead shares, each with its window: ``dead_share`` (neurons that
        fire for none of ``activations``' rows; ``dead_window`` says which rows) and
        ``dead_share_training`` (neurons silent for the last ``dead_steps`` training steps;
        ``dead_training_window``).
    """
    x = torch.as_tensor(np.asarray(vectors, dtype=np.float32), device=device)
    model.eval()
    fvu = mean_l0 = None
    if len(x) >= 2:
        fvu = round(fraction_of_variance_unexplained(model, x), 5)
        with torch.no_grad():
            mean_l0 = round(float((model.encode(x) > 0).sum(1).float().mean()), 3)
    fired = (activations > 0).any(axis=0)
    rows = rows_label or f"{len(activations)} encoded rows"
    return {
        "fvu": fvu,
        "explained_variance": None if fvu is None else round(1 - fvu, 5),
        "mean_l0": mean_l0,
        "active_per_vector": round(float((activations > 0).sum(axis=1).mean()), 3) if len(activations) else 0.0,
        "neurons_used": int(fired.sum()),
        "dead_share": round(1 - float(fired.mean()), 4),
        "dead_window": f"fires for none of {rows}",
        "dead_share_training": round(float(model.dead_mask().float().mean()), 4),
        "dead_training_window": f"no firing in the last {model.dead_steps} training steps",
    }
