"""The ledger of every night, as data (``sleep.py status`` adds the daemon on top)."""
from __future__ import annotations

from api.args import Root, paths_of
from core.lock import lock_holder
from memory import ledger, make_sessionmaker, open_database


def status(root: Root) -> dict:
    """Every night in the ledger with its stages.

    Args:
        root: the folder holding ``memory/`` (or its :class:`~core.paths.Paths`).
    Returns:
        ``{"root", "running": lock holder or None, "nights": {date: {stage: {...}}}}``
        with each stage's ``status``, ``seconds`` and ``error`` among its fields. A stage
        recorded as running while nobody holds the lock was killed: it reads
        ``interrupted`` and the next run of that night redoes it.
    """
    paths = paths_of(root)
    running = lock_holder(paths.lock)
    nights: dict = {}
    if paths.database.exists():
        engine = open_database(paths.database)
        try:
            with make_sessionmaker(engine)() as session:
                for date, states in ledger.all_nights(session).items():
                    nights[date] = {}
                    for s in states:
                        entry = s.as_dict()
                        if entry["status"] == "running" and not running:
                            entry["status"] = "interrupted"
                        nights[date][s.stage] = entry
        finally:
            engine.dispose()
    return {"root": str(paths.root), "running": running, "nights": nights}
