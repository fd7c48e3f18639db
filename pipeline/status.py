"""``sleep.py status``: the ledger of every night (:func:`api.status`) and the daemon, as data."""
from __future__ import annotations

from api import status
from core.paths import Paths
from pipeline.daemon import daemon_status


def night_status(paths: Paths) -> dict:
    """``{"root", "running": holder-or-None, "daemon": {"pid", "next_run"}-or-None,
    "nights": {date: {stage: {...}}}}``; see :func:`api.status` for the nights.
    """
    ledger = status(paths)
    return {"root": ledger["root"], "running": ledger["running"], "daemon": daemon_status(paths),
            "nights": ledger["nights"]}
