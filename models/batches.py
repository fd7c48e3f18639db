"""Row batches for the small trainers that hold a night's vectors in memory."""
from __future__ import annotations

from collections.abc import Iterator

import torch


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
