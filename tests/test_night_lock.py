"""One night at a time: a second night on the same root exits 3 naming the first's pid."""
from __future__ import annotations

import subprocess
import sys
import time

from conftest import REPO, run_cli

from core.paths import Paths

HOLD_LOCK = """
import sys, time
sys.path.insert(0, {repo!r})
from core.lock import NightLock
from core.paths import Paths
with NightLock(Paths.at({root!r}).lock, "night 2026-01-15"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_second_night_exits_3_and_names_the_first_pid(root):
    Paths.at(root).raw(__import__("datetime").date(2026, 1, 15)).mkdir(parents=True)
    first = subprocess.Popen([sys.executable, "-c", HOLD_LOCK.format(repo=str(REPO), root=str(root))],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "locked"
        second = run_cli("--date", "2026-01-15", "--root", str(root), "--device", "cpu")
        assert second.returncode == 3, second.stderr
        assert f"pid {first.pid}" in second.stderr
        status = run_cli("status", "--root", str(root), "--json")
        assert f"pid {first.pid}" in status.stdout
    finally:
        first.kill()
        first.wait()
    # The kernel frees the lock with the process, even after SIGKILL.
    time.sleep(0.1)
    assert run_cli("--date", "2026-01-15", "--root", str(root), "--device", "cpu").returncode == 0
