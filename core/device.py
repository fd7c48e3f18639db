"""Where models run: the one place that turns ``runtime.device`` into ``cpu`` or ``cuda``."""
from __future__ import annotations

from core.errors import UsageError


def resolve_device(requested: str) -> str:
    """``auto`` picks CUDA when present; asking for CUDA without one is a usage error.

    Args:
        requested: ``"auto"``, ``"cpu"`` or ``"cuda"`` (``runtime.device`` or ``--device``).
    Returns:
        ``"cpu"`` or ``"cuda"``.
    Raises:
        UsageError: ``cuda`` was asked for and no CUDA device is available.
    """
    if requested == "cpu":
        return "cpu"
    import torch  # only when a choice depends on it

    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise UsageError("--device cuda: no CUDA device is available on this machine")
    return "cpu"
