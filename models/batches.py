"""Row batches for the small trainers that hold a night's vectors in memory."""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch


@dataclass
class TrainResult:
    """What one night of a small trainer (align, sae) produced."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step: int                 # global, over all nights
    steps: int                # tonight's
    seconds: float
    history: list[dict] = field(default_factory=list)


def night_steps(rows: int, cfg) -> int:
    """``cfg.epochs`` passes over ``rows`` in batches of ``cfg.batch_size``, clamped to
    ``[cfg.min_steps, cfg.max_steps]`` (the align, sae and reconstruct configs)."""
    per_epoch = math.ceil(rows / min(cfg.batch_size, rows))
    return int(min(cfg.max_steps, max(cfg.min_steps, cfg.epochs * per_epoch)))


def shuffled_batches(n: int, batch: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless ``batch``-sized index tensors over rows ``0..n-1``: each pass visits every row
    once, in a fresh order (the rows a pass cannot fill a batch with wait for the next pass).
    """
    if not 1 <= batch <= n:
        raise ValueError(f"batch {batch} must be in [1, {n}]")
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch + 1, batch):
            yield order[start:start + batch]


def night_batches(n: int, cfg, seed: int, steps: int | None = None) -> tuple[int, Iterator[torch.Tensor]]:
    """Tonight's step count and its batches of row indices.

    Args:
        n: rows held in memory.
        cfg: a config with ``batch_size``, ``epochs``, ``min_steps``, ``max_steps``.
        seed: seeds the batch order.
        steps: overrides :func:`night_steps`.
    Returns:
        ``(total, batches)``: the steps to run and an endless iterator of index tensors.
    """
    total = steps if steps is not None else night_steps(n, cfg)
    return total, shuffled_batches(n, min(cfg.batch_size, n), torch.Generator().manual_seed(seed))
