"""Stage ``retention``: footage older than ``memory.retention`` goes; embeddings stay."""
from __future__ import annotations

from memory import active_version, spaces
from memory.retention import apply_retention
from stages import Night


def run(night: Night) -> dict:
    """Apply :func:`memory.retention.apply_retention` relative to the night's date.

    The checkpoints of every space's active version stay whatever their age: a query embeds
    its example with the checkpoint of the version it searches, and while re-embedding is
    not finished that is an earlier night's.
    """
    searched = {active_version(night.engine, space) for space in spaces(night.engine)}
    return apply_retention(night.engine, night.paths, night.cfg.memory.retention, night.date,
                           keep_versions=sorted(v for v in searched if v))
