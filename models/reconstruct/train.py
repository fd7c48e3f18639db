"""Train the reconstructors on one night's (fragment, clip) pairs, and measure them.

A fragment is the embedding of a damaged view of a frame (:mod:`models.reconstruct.fragments`);
its targets are the clean embedding of that frame and its clip, one of the stored patterns
(the bank). The MLP and the pattern layer learn to map fragment to frame; the Hopfield
network learns where to look among the stored clips; all learn to recall the clip. AdamW, warm-up and cosine schedule as a pure function of the step, as
every nightly trainer here.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from core.config import ReconstructConfig
from core.progress import bar_off
from models import schedules
from models.batches import night_batches
from models.distributed import Objective, current
from models.reconstruct.networks import HopfieldRecall, HopfieldReconstructor, build, unit_blocks

log = logging.getLogger(__name__)
VARIANTS = ("mlp", "hopfield", "pattern")
CHOICES = ("fragment", *VARIANTS)  # what query --fragment may complete with, simplest first


def bank_rows(n: int, cfg: ReconstructConfig, seed: int) -> np.ndarray:
    """Which of the night's ``n`` clips are stored patterns: all, or a seeded ``bank_max`` sample."""
    if n <= cfg.bank_max:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, cfg.bank_max, replace=False))


def _unit(x, device: str) -> torch.Tensor:
    return F.normalize(torch.as_tensor(np.asarray(x, dtype=np.float32), device=device), dim=-1)


def _unit_fragments(x, dim: int, device: str) -> torch.Tensor:
    """Fragment descriptions (:func:`models.vision.embed.embed_fragments`), each block unit length."""
    return unit_blocks(torch.as_tensor(np.asarray(x, dtype=np.float32), device=device), dim)


@dataclass
class ReconstructTrainResult:
    models: dict[str, torch.nn.Module]
    step: int                 # global, over all nights
    steps: int                # tonight's
    seconds: float
    history: dict[str, list[float]] = field(default_factory=dict)  # variant -> loss curve


def train_reconstructors(bank: np.ndarray, fragments: np.ndarray, targets: np.ndarray, cfg: ReconstructConfig,
                         device: str, *, clean: np.ndarray | None = None, seed: int = 0, resume: dict | None = None,
                         steps: int | None = None, progress: bool = True) -> ReconstructTrainResult:
    """Fit every reconstructor variant on (fragment, clip) pairs.

    Args:
        bank: ``(M, D)`` the night's clip embeddings (the Hopfield network's memories).
        fragments: ``(F, W)`` descriptions of damaged views (:func:`models.vision.embed.embed_fragments`:
            the mean embedding, then the layout's regions; ``NaN`` where there is no layout).
        targets: ``(F,)`` each fragment's clip, as a row of ``bank``.
        clean: ``(F, D)`` each fragment's own frame's clean embedding (the completion
            target of the MLP and the pattern layer); ``None``: its clip's.
        cfg: the ``models.reconstruct`` config.
        device: ``cpu`` or ``cuda``.
        seed: seeds initialisation and batch order.
        resume: last night's checkpoint (``models``, ``step``) when its shapes fit.
        steps: overrides :func:`models.batches.night_steps`.
    Raises:
        ValueError: fewer than two pairs, or fragments and targets of different lengths.
    """
    if len(fragments) != len(targets):
        raise ValueError(f"{len(fragments)} fragments but {len(targets)} targets")
    if len(fragments) < 2:
        raise ValueError("the reconstructors need at least two fragments")
    memories = _unit(bank, device)
    views = _unit_fragments(fragments, memories.shape[1], device)
    cleans = None if clean is None else _unit(clean, device)
    target_rows = torch.as_tensor(np.asarray(targets), dtype=torch.long, device=device)
    torch.manual_seed(seed)
    models = {v: build(v, memories.shape[1], cfg).to(device) for v in VARIANTS}
    global_step = 0
    if resume is not None:
        for v in VARIANTS:
            if v in resume["models"]:  # a variant added since that night starts fresh
                models[v].load_state_dict(resume["models"][v])
        global_step = int(resume["step"])
    for m in models.values():
        m.set_statistics(views, memories)  # tonight's, also when continuing last night's weights
    optimizers = {v: torch.optim.AdamW(m.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
                  for v, m in models.items()}

    total, batches = night_batches(len(views), cfg, seed, steps)
    noise = FreshNoise(cleans, cfg, seed) if cleans is not None else None
    history: dict[str, list[float]] = {v: [] for v in VARIANTS}
    started = time.perf_counter()
    for m in models.values():
        m.train()
    # Under torchrun each process trains on its slice of every batch (models.distributed);
    # a fragment's loss needs only the stored memories, so N processes take one's step.
    ranks = current()
    losses = {v: ranks.wrap(Objective(m, type(m).loss), find_unused=True) for v, m in models.items()}
    for it in tqdm(range(total), desc="reconstruct", unit="step", disable=bar_off(progress, not ranks.main),
                   leave=False):
        whole = next(batches)
        scale = ranks.scale(len(whole))
        idx = ranks.split(whole).to(device)
        target, batch = target_rows[idx], views[idx]
        clean_batch = None if cleans is None else cleans[idx]
        if noise is not None:
            batch, target, clean_batch = noise.extend(batch, target, clean_batch)
        lr = schedules.warmup_cosine(it, total, cfg.warmup_steps, 0.0, cfg.lr, 0.0)
        for v in models:
            for group in optimizers[v].param_groups:
                group["lr"] = lr
            loss = losses[v](batch, memories, target, clean_batch) * scale
            optimizers[v].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[v].step()
            if it % 10 == 0 or it == total - 1:
                history[v].append(round(ranks.mean(loss.detach()).item(), 5))
        global_step += 1
    seconds = time.perf_counter() - started
    for m in models.values():
        m.eval()
    log.info("reconstruct: %d steps on %d fragments (%d clips stored) in %.1fs; final loss %s", total,
             len(views), len(memories), seconds, {v: h[-1] for v, h in history.items()})
    return ReconstructTrainResult(models, global_step, total, seconds, history)


class FreshNoise:
    """Noisy fragments drawn afresh every step: ``noise_share`` x the batch more rows, each a
    clean frame embedding of the batch plus Gaussian noise at one of ``noise_snr_db``.

    Why: noise in embedding space (the seed's vague memory) costs nothing to draw, and the
    fixed copy per frame and SNR the stage also makes was learned by heart: the networks then
    moved noisy fragments *away* from their clips (0 dB on the demo day with cpu.yaml: R@1
    0.76 as it is, 0.31 after the Hopfield network). The rows are added, not swapped for
    image fragments, so the image damage keeps its share of every step. The signal is what
    tells a frame from the mean of the night's frames, as in
    :func:`stages.reconstruct.noisy_fragments`.
    """

    def __init__(self, cleans: torch.Tensor, cfg: ReconstructConfig, seed: int):
        self.snrs = torch.tensor([float(s) for s in cfg.noise_snr_db])
        self.share = cfg.noise_share if len(self.snrs) else 0.0
        self.power = float((cleans - cleans.mean(dim=0)).pow(2).mean()) if len(cleans) > 1 else 0.0
        self.generator = torch.Generator().manual_seed(seed + 0x0015E)

    def extend(self, batch: torch.Tensor, targets: torch.Tensor, cleans: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``batch``, ``targets`` and ``cleans`` with the noisy rows appended (of the batch's
        first frames, which are in random order)."""
        n = min(len(batch), int(round(self.share * len(batch))))
        if n == 0 or self.power == 0:
            return batch, targets, cleans
        snr = self.snrs[torch.randint(len(self.snrs), (n,), generator=self.generator)]
        sigma = (self.power / 10 ** (snr / 10)).sqrt()
        drawn = torch.randn(n, cleans.shape[1], generator=self.generator) * sigma[:, None]
        noisy = F.normalize(cleans[:n] + drawn.to(batch.device, batch.dtype), dim=-1)
        if batch.shape[1] > noisy.shape[1]:  # a vector in embedding space has no layout
            noisy = torch.cat([noisy, noisy.new_full((n, batch.shape[1] - noisy.shape[1]), float("nan"))], dim=1)
        return torch.cat([batch, noisy]), torch.cat([targets, targets[:n]]), torch.cat([cleans, cleans[:n]])


def completer(model: torch.nn.Module, bank: np.ndarray, device: str, top_k: int | None = None,
              batch_size: int = 1024) -> Callable[[np.ndarray], np.ndarray]:
    """``(N, W)`` fragment descriptions (or bare ``(N, D)`` embeddings) -> ``(N, D)`` completed
    unit vectors, float32.

    The Hopfield network recalls over its ``top_k`` nearest keys (:class:`HopfieldRecall`,
    FAISS) when the bank holds more patterns than that; ``None`` keeps the full softmax.
    """
    model.eval()
    memories = _unit(bank, device)
    if isinstance(model, HopfieldReconstructor) and top_k is not None and top_k < len(memories):
        recall = HopfieldRecall(model, memories, top_k)
        step = lambda x: recall(x)
    else:
        step = lambda x: model(x, memories)

    @torch.no_grad()
    def complete_fragments(fragments: np.ndarray) -> np.ndarray:
        x = _unit_fragments(fragments, memories.shape[1], device)
        out = [F.normalize(step(x[i:i + batch_size]), dim=-1).cpu() for i in range(0, len(x), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, memories.shape[1]), np.float32)

    return complete_fragments


def complete(model: torch.nn.Module, fragments: np.ndarray, bank: np.ndarray, device: str,
             top_k: int | None = None) -> np.ndarray:
    """Completed unit vectors ``(N, D)`` float32 for ``(N, D)`` fragment embeddings."""
    return completer(model, bank, device, top_k)(fragments)


def evaluate(models: dict[str, torch.nn.Module], bank: np.ndarray, fragments: np.ndarray, targets: np.ndarray,
             device: str, top_k: int | None = None) -> dict:
    """Fragments as they are, and completed by each model, against the clips they came from.

    Returns:
        ``{"fragment": {...}, "mlp": {...}, "hopfield": {...}, "pattern": {...}, "chance_top1",
        "fragments"}``;
        each entry has ``cosine`` (mean cosine to the clip's embedding) and ``top1``/``top5``
        (share whose own clip is the nearest / among the five nearest of all stored clips).
    """
    memories = unit_bank(bank)
    as_is = np.asarray(fragments, dtype=np.float32)[:, :memories.shape[1]]  # the mean embedding: what a search compares
    out = {"fragment": recall_scores(as_is, memories, targets),
           "chance_top1": round(1 / len(memories), 6), "fragments": len(targets)}
    for v, model in models.items():
        out[v] = recall_scores(complete(model, fragments, memories, device, top_k), memories, targets)
    return out


def unit_bank(bank: np.ndarray) -> np.ndarray:
    """The stored clips as unit vectors: what fragments are completed against and ranked among."""
    return _unit(bank, "cpu").numpy()


def recall_scores(vectors: np.ndarray, memories: np.ndarray, targets: np.ndarray, chunk: int = 1024) -> dict:
    """``cosine`` (mean cosine to the own clip), ``top1`` and ``top5`` (share whose own clip is
    nearest / among the five nearest of the unit ``memories``). A clip's rank counts the clips
    *strictly* closer, so a tie with the own clip counts for the fragment."""
    targets = np.asarray(targets)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    own, rank = np.zeros(len(unit)), np.zeros(len(unit), dtype=int)
    for i in range(0, len(unit), chunk):  # a chunk of fragments against every clip at a time
        sims = unit[i:i + chunk] @ memories.T
        own[i:i + chunk] = sims[np.arange(len(sims)), targets[i:i + chunk]]
        rank[i:i + chunk] = (sims > own[i:i + chunk, None]).sum(axis=1)  # clips strictly closer
    return {"cosine": round(float(own.mean()), 4), "top1": round(float((rank == 0).mean()), 4),
            "top5": round(float((rank < 5).mean()), 4)}


def choose(metrics: dict, use: str) -> str:
    """What ``query --fragment`` completes with: ``use`` itself, or for ``auto`` whichever of
    the fragment as it is (``"fragment"``) and the variants found the most held-out
    fragments' clips first (ties go to the simpler one, in :data:`CHOICES` order)."""
    if use != "auto":
        return use
    offered = [k for k in CHOICES if k in metrics]
    return max(offered, key=lambda k: (metrics[k]["top1"], -offered.index(k)))
