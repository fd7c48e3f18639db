"""Row batches for the small trainers that hold a night's vectors in memory, and the
replay sample of earlier days that the vision and audio trainers mix into their batches."""
from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")


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


# -- replay of earlier days ----------------------------------------------------------------------

def even_shares(sizes: Mapping[str, int], budget: int, seed: int) -> dict[str, int]:
    """How many of ``budget`` replay items each day gives: the same number from every day.

    A day with fewer items than its share gives all it has, and the rest of the budget is
    shared again among the other days (water-filling), so a busy day never crowds out a
    quiet one and the budget is used whenever the days hold enough. When the budget does
    not divide evenly, a seeded draw of days gives one item more.

    Args:
        sizes: day -> items it holds.
        budget: items to replay in all (``>= 0``).
        seed: seeds which days take the odd items.
    Returns:
        day -> items to take from it (every key of ``sizes``; ``min(budget, sum)`` in all).
    """
    shares = {day: 0 for day in sizes}
    open_days = sorted(day for day, n in sizes.items() if n > 0)
    left = max(0, budget)
    while open_days and left > 0:
        share, odd = divmod(left, len(open_days))
        small = [day for day in open_days if sizes[day] <= share]
        if small:  # they give all they have; the others share what is left
            for day in small:
                shares[day] = sizes[day]
                left -= sizes[day]
            open_days = [day for day in open_days if day not in small]
            continue
        # Every open day holds more than `share`, so each can give one more if drawn.
        lucky = set(np.random.default_rng([seed, 0xDA75]).permutation(len(open_days))[:odd].tolist())
        for i, day in enumerate(open_days):
            shares[day] = share + (i in lucky)
        left = 0
    return shares


def replay_by_day(pools: Mapping[str, Sequence[T]], budget: int, seed: int) -> dict[str, list[T]]:
    """A seeded replay sample of earlier days, spread evenly over the days (:func:`even_shares`).

    Each day's items are drawn with a generator seeded by ``(seed, day)``, so a day's sample
    depends only on the seed, the day and its share, not on the other days.

    Args:
        pools: day (``YYYY-MM-DD``) -> its items (frame ids, segment refs, paths ...).
        budget: items to replay in all.
        seed: the night's seed.
    Returns:
        day -> its chosen items in their pool order; days that give none are left out.
    """
    shares = even_shares({day: len(items) for day, items in pools.items()}, budget, seed)
    chosen: dict[str, list[T]] = {}
    for day in sorted(shares):
        items, n = pools[day], shares[day]
        if n == 0:
            continue
        if n >= len(items):
            chosen[day] = list(items)
            continue
        rng = np.random.default_rng([seed, zlib.crc32(day.encode())])
        chosen[day] = [items[i] for i in np.sort(rng.choice(len(items), size=n, replace=False))]
    return chosen
