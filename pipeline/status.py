"""``sleep.py status``: the ledger of every night, as data."""
from __future__ import annotations

from core.lock import lock_holder
from core.paths import Paths
from memory import ledger
from memory.db import make_sessionmaker, open_database
from pipeline.daemon import daemon_status


def night_status(paths: Paths) -> dict:
    """``{"root", "running": holder-or-None, "daemon": {"pid", "next_run"}-or-None,
    "nights": {date: {stage: {...}}}}``.

    A stage recorded as running while nobody holds the lock was killed: it reads
    ``interrupted`` and the next run of that night redoes it.
    """
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
    return {"root": str(paths.root), "running": running, "daemon": daemon_status(paths),
            "nights": nights}
