"""Test stages for the daemon, and a launcher that runs the daemon with them in a subprocess.

    python tests/daemon_helpers.py ROOT NOW   # daemon on ROOT with SLOW_STAGES, clock fixed at NOW

Each stage appends ``"{date} {stage}"`` to ``ROOT/calls.txt`` so a test can see what ran,
in which order and how often.
"""
from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from stages import Stage

SLOW_SECONDS = 2.0


def _record(night, name: str) -> dict:
    with open(night.paths.root / "calls.txt", "a") as fh:
        fh.write(f"{night.day} {name}\n")
    return {"stage": name}


def first(night) -> dict:
    return _record(night, "first")


def slow(night) -> dict:
    _record(night, "slow")
    (night.paths.root / "slow-started").touch()
    time.sleep(SLOW_SECONDS)  # long enough for the test to send SIGTERM mid-stage
    return {"slept": SLOW_SECONDS}


def last(night) -> dict:
    return _record(night, "last")


def full(night) -> dict:
    _record(night, "full")
    raise OSError(28, "No space left on device", str(night.paths.root / "memory" / "x.npy"))


FULL_STAGES = [
    Stage("first", "daemon_helpers:first", ("ingest",)),
    Stage("full", "daemon_helpers:full", ("ingest",), needs=("first",)),
]
QUICK_STAGES = [
    Stage("first", "daemon_helpers:first", ("ingest",)),
    Stage("last", "daemon_helpers:last", ("ingest",), needs=("first",)),
]
SLOW_STAGES = [
    Stage("first", "daemon_helpers:first", ("ingest",)),
    Stage("slow", "daemon_helpers:slow", ("ingest",), needs=("first",)),
    Stage("last", "daemon_helpers:last", ("ingest",), needs=("slow",)),
]


def calls(root: Path) -> list[str]:
    """What ran so far, as ``"{date} {stage}"`` lines in order."""
    path = Path(root) / "calls.txt"
    return path.read_text().splitlines() if path.exists() else []


def main(argv: list[str]) -> int:
    from core.config import CONFIG_DIR, load_config
    from core.logs import configure_console
    from core.paths import Paths
    from pipeline.daemon import run_daemon

    root, now = argv
    configure_console()
    fixed = dt.datetime.fromisoformat(now)
    cfg = load_config(CONFIG_DIR / "tiny.yaml", ["schedule.timezone=UTC"])
    return run_daemon(cfg, Paths.at(root), stages=SLOW_STAGES, device="cpu", clock=lambda: fixed)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
