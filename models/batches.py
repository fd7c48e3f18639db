"""Row batches for the small trainers that hold a night's vectors in memory."""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch


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
