"""Learning rate, weight decay and EMA momentum as pure functions of the step.

Resuming needs only the step, never a fast-forward of stateful schedulers (ijepa's
``WarmupCosineSchedule`` has to be stepped again from zero after a restart).
"""
from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, warmup: int, start: float, peak: float, final: float) -> float:
    """Linear warmup from ``start`` to ``peak`` over ``warmup`` steps, then cosine to ``final``.

    Args:
        step: 0-based step within the run.
        total: steps in the run.
        warmup: warmup steps (``<= total``).
        start, peak, final: the values at step 0, at the end of warmup and at ``total``.
    Returns:
        the learning rate for ``step``.
    """
    if step < warmup:
        return start + (peak - start) * step / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine(step: int, total: int, first: float, last: float) -> float:
    """Half-cosine from ``first`` (step 0) to ``last`` (step ``total``); used for weight decay."""
    progress = min(1.0, step / max(1, total))
    return last + (first - last) * 0.5 * (1.0 + math.cos(math.pi * progress))


def linear(step: int, total: int, first: float, last: float) -> float:
    """Straight line from ``first`` (step 0) to ``last`` (step ``total``); used for EMA momentum."""
    return first + (last - first) * min(1.0, step / max(1, total))
