"""Earlier nights, as their reports left them: the ``summary.json`` files beside tonight's.

The morning page sets tonight against the last week (curves overlaid, memory health night by
night, stage timings against their median); it reads only what earlier reports wrote, so a
rebuilt report of an old night sees the nights before it, never later ones.
"""
from __future__ import annotations

import datetime as dt
import json
import logging

from core.paths import Paths
from core.sealed import SealedFileError

log = logging.getLogger(__name__)

WEEK = 7


def earlier_summaries(paths: Paths, date: dt.date, count: int = WEEK) -> list[tuple[str, dict]]:
    """``(night, summary)`` of the last ``count`` nights before ``date`` that wrote a report, oldest first.

    Args:
        paths: the layout under the root (``reports/{date}/summary.json``).
        date: tonight; only nights strictly before it count.
        count: how many nights at most.
    Returns:
        a list of ``(ISO date, summary dict)``; a folder without a readable ``summary.json``
        (missing, not JSON, sealed and damaged) is passed over (logged at debug level).
    """
    folder = paths.root / "reports"
    nights = []
    for child in sorted(folder.iterdir()) if folder.is_dir() else []:
        try:
            night = dt.date.fromisoformat(child.name)
        except ValueError:
            continue
        if night < date:
            nights.append(child)
    found: list[tuple[str, dict]] = []
    for child in reversed(nights):
        try:
            found.append((child.name, json.loads(paths.vault.read_text(child / "summary.json"))))
        except (OSError, ValueError, SealedFileError) as exc:
            log.debug("report history: %s passed over: %s", child, exc)
            continue
        if len(found) == count:
            break
    return found[::-1]


def pick(summary: dict, path: str):
    """The value at a dotted ``path`` (``"metrics.vision.loss_curve"``) of ``summary``, or ``None``."""
    value = summary
    for key in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value
