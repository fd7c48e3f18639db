"""Stage ``retention``: footage older than ``memory.retention`` goes; embeddings stay."""
from __future__ import annotations

from memory.retention import apply_retention
from stages import Night


def run(night: Night) -> dict:
    """Apply :func:`memory.retention.apply_retention` relative to the night's date."""
    return apply_retention(night.engine, night.paths, night.cfg.memory.retention, night.date)
