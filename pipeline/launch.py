"""A night on several training processes, started from a running program (the daemon).

``sleep.py run --gpus N`` is the one way a night trains on several processes: it becomes
``torchrun`` running itself (:mod:`models.together`). The daemon does the same for each
night when ``runtime.gpus`` > 1: it writes the config it holds to a private file, runs
``sleep.py run --date D --gpus N`` as a child and reads the night's outcome back from the
ledger the child wrote. A stop request is passed on as SIGTERM: torchrun hands it to every
rank, rank 0 ends the night after the stage in progress if that takes less than torchrun's
grace period (30 s), and otherwise torchrun kills the ranks and the next run redoes the
interrupted stage (every stage is safe to kill).
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Callable

import yaml

from core.config import SleepConfig
from core.paths import Paths
from memory import ledger
from memory.db import make_sessionmaker, open_database
from pipeline.runner import NightOutcome

log = logging.getLogger(__name__)
SLEEP_PY = Path(__file__).resolve().parent.parent / "sleep.py"


def night_command(date: dt.date, config_file: Path, root: Path, processes: int, device: str | None) -> list[str]:
    command = [sys.executable, str(SLEEP_PY), "run", "--date", date.isoformat(), "--root", str(root),
               "--config", str(config_file), "--gpus", str(processes)]
    return command + (["--device", device] if device else [])


def run_night_on_processes(date: dt.date, cfg: SleepConfig, paths: Paths, *, processes: int,
                           device: str | None = None,
                           should_stop: Callable[[], bool] = lambda: False) -> NightOutcome:
    """Run the night of ``date`` with its training on ``processes`` torchrun ranks.

    Returns:
        the night's outcome as the ledger has it (a stage the child left ``running`` was
        interrupted, and counts as failed).
    """
    paths.root.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".night-config-", suffix=".yaml", dir=paths.root)  # 0600
    config_file = Path(name)
    stopped = False
    try:
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(cfg.model_dump(mode="json"), f, sort_keys=False)
        child = subprocess.Popen(night_command(date, config_file, paths.root, processes, device))
        while child.poll() is None:
            if should_stop() and not stopped:
                log.warning("stop requested: asking night %s to end after its current stage", date)
                child.terminate()
                stopped = True
            time.sleep(0.5)
    finally:
        config_file.unlink(missing_ok=True)
    outcome = _outcome_from_ledger(date, paths)
    outcome.stopped_early = stopped
    if child.returncode not in (0, 1) and outcome.ok and not stopped:
        outcome.states["night"] = "failed"
        outcome.errors["night"] = f"the {processes}-process night exited with code {child.returncode}"
    return outcome


def _outcome_from_ledger(date: dt.date, paths: Paths) -> NightOutcome:
    outcome = NightOutcome(date)
    if not paths.database.exists():
        return outcome
    engine = open_database(paths.database)
    try:
        with make_sessionmaker(engine)() as session:
            for state in ledger.night(session, date.isoformat()):
                status = "failed" if state.status == "running" else state.status
                outcome.states[state.stage] = status
                if state.seconds is not None:
                    outcome.seconds[state.stage] = state.seconds
                if status == "failed":
                    outcome.errors[state.stage] = state.error or "interrupted"
    finally:
        engine.dispose()
    report = paths.report(date) / "index.html"
    outcome.report_path = str(report) if report.exists() else None
    return outcome
