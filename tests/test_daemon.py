"""The nightly daemon: schedule config, which nights are due, catch-up, locks, SIGTERM, deploy files."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zoneinfo
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from daemon_helpers import FULL_STAGES, QUICK_STAGES, calls

from core.config import CONFIG_DIR, ConfigError, SleepConfig, load_config
from core.lock import lock_holder
from core.paths import Paths
from core.signals import GracefulStop
from memory import ledger
from memory.db import make_sessionmaker, open_database
from pipeline.daemon import Daemon, days_to_catch_up, latest_due_night, run_daemon
from pipeline.runner import run_night
from pipeline.status import night_status

UTC = dt.timezone.utc
D = dt.date


def tiny(*overrides: str) -> SleepConfig:
    return load_config(CONFIG_DIR / "tiny.yaml", ["schedule.timezone=UTC", *overrides])


def add_raw(root: Path, *dates: str) -> Paths:
    paths = Paths.at(root)
    for day in dates:
        paths.raw(D.fromisoformat(day)).mkdir(parents=True, exist_ok=True)
    return paths


def ledger_rows(paths: Paths) -> dict[tuple[str, str], str]:
    engine = open_database(paths.database)
    try:
        with make_sessionmaker(engine)() as session:
            return {(s.date, s.stage): s.status
                    for states in ledger.all_nights(session).values() for s in states}
    finally:
        engine.dispose()


def wait_for(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


# -- schedule config -----------------------------------------------------------------------

def _exists_once(day: dt.date, at: dt.time, zone: str) -> bool:
    """The wall time ``at`` on ``day`` is neither skipped nor repeated by a DST switch."""
    tz = zoneinfo.ZoneInfo(zone)
    local = dt.datetime.combine(day, at, tzinfo=tz)
    round_trip = local.astimezone(UTC).astimezone(tz)
    unambiguous = local.utcoffset() == local.replace(fold=1).utcoffset()
    return round_trip.replace(tzinfo=None) == local.replace(tzinfo=None) and unambiguous


@pytest.mark.parametrize("zone", ["Europe/Berlin", "Europe/Helsinki", "Europe/London",
                                  "America/New_York", "Australia/Sydney"])
def test_default_run_time_avoids_dst_switch_hours(zone):
    at = dt.time(*map(int, SleepConfig().schedule.at.split(":")))
    days = [D(2026, 1, 1) + dt.timedelta(days=i) for i in range(365)]
    assert all(_exists_once(day, at, zone) for day in days)


def test_dst_check_catches_a_time_inside_a_switch_hour():
    # 03:30 does not exist in Helsinki on the last Sunday of March (03:00 -> 04:00).
    assert not _exists_once(D(2026, 3, 29), dt.time(3, 30), "Europe/Helsinki")


def test_schedule_rejects_bad_time_and_zone_naming_both(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text('schedule:\n  at: "25:10"\n  timezone: Mars/Olympus\n')
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "schedule.at" in str(err.value) and "schedule.timezone" in str(err.value)


def test_unquoted_yaml_time_asks_for_quotes(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("schedule:\n  at: 4:30\n")  # YAML 1.1 reads this as 270
    with pytest.raises(ConfigError, match="in quotes"):
        load_config(bad)


def test_cli_daemon_bad_at_exits_2(root):
    result = run_cli("daemon", "--at", "4.30", "--root", str(root))
    assert result.returncode == 2
    assert "--at" in result.stderr and "HH:MM" in result.stderr


# -- which nights are due --------------------------------------------------------------------

@pytest.mark.parametrize("now, night", [
    ("2026-01-16T04:29", "2026-01-14"),  # before today's run: yesterday is not due yet
    ("2026-01-16T04:30", "2026-01-15"),
    ("2026-01-16T23:59", "2026-01-15"),
    ("2026-01-17T00:10", "2026-01-15"),  # the 16th's run firing late after midnight
])
def test_latest_due_night(now, night):
    assert latest_due_night(dt.datetime.fromisoformat(now), dt.time(4, 30)) == D.fromisoformat(night)


def test_days_to_catch_up_oldest_first_within_window_skipping_complete():
    raw = [D(2026, 1, d) for d in (16, 5, 14, 10, 12, 15, 13)]
    done = {D(2026, 1, 13): {"first", "last"},  # complete
            D(2026, 1, 12): {"first"}}          # its "last" failed: not complete
    got = days_to_catch_up(raw, done, ["first", "last"], newest=D(2026, 1, 15), limit=3)
    # the 5th and 10th are older than the window, the 16th is not due yet
    assert got == [D(2026, 1, 12), D(2026, 1, 14), D(2026, 1, 15)]


def test_days_to_catch_up_with_zero_limit_is_only_the_newest():
    raw = [D(2026, 1, 14), D(2026, 1, 15)]
    assert days_to_catch_up(raw, {}, ["a"], newest=D(2026, 1, 15), limit=0) == [D(2026, 1, 15)]


def test_with_no_stages_every_night_is_complete():
    assert days_to_catch_up([D(2026, 1, 15)], {}, [], newest=D(2026, 1, 15), limit=7) == []


# -- runs ------------------------------------------------------------------------------------

def test_once_catches_up_missing_nights_in_order(root):
    paths = add_raw(root, "2026-01-10", "2026-01-12", "2026-01-13", "2026-01-15", "2026-01-16")
    cfg = tiny("schedule.catch_up_days=3")
    run_night(D(2026, 1, 13), cfg, paths, stages=QUICK_STAGES, device="cpu")
    (root / "calls.txt").unlink()
    clock = lambda: dt.datetime(2026, 1, 16, 10, 0, tzinfo=UTC)  # noqa: E731

    assert run_daemon(cfg, paths, once=True, stages=QUICK_STAGES, device="cpu", clock=clock) == 0

    assert calls(root) == ["2026-01-12 first", "2026-01-12 last",
                           "2026-01-15 first", "2026-01-15 last"]
    nights = {day for day, _ in ledger_rows(paths)}
    assert nights == {"2026-01-12", "2026-01-13", "2026-01-15"}
    assert not paths.daemon_lock.exists() or lock_holder(paths.daemon_lock) is None


def test_a_disk_full_night_stops_the_catch_up_and_the_next_run_retries(root):
    paths = add_raw(root, "2026-01-14", "2026-01-15")
    cfg = tiny("schedule.catch_up_days=3")
    clock = lambda: dt.datetime(2026, 1, 16, 10, 0, tzinfo=UTC)  # noqa: E731

    assert run_daemon(cfg, paths, once=True, stages=FULL_STAGES, device="cpu", clock=clock) == 1

    # The later night was not started: its first write would have found no room either.
    assert calls(root) == ["2026-01-14 first", "2026-01-14 full"]
    (root / "calls.txt").unlink()
    assert run_daemon(cfg, paths, once=True, stages=QUICK_STAGES, device="cpu", clock=clock) == 0
    assert calls(root) == ["2026-01-14 last", "2026-01-15 first", "2026-01-15 last"]  # first was done


class FakeClock:
    def __init__(self, now: dt.datetime):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def test_daemon_runs_the_due_night_when_its_time_comes(root):
    from apscheduler.triggers.interval import IntervalTrigger

    paths = add_raw(root, "2026-01-14", "2026-01-15")
    clock = FakeClock(dt.datetime(2026, 1, 16, 3, 0, tzinfo=UTC))  # before 04:30
    # A one-second trigger stands in for the daily one; the fake clock decides what is due.
    daemon = Daemon(tiny(), paths, stages=QUICK_STAGES, device="cpu", clock=clock,
                    trigger=IntervalTrigger(seconds=1))
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(daemon.run()))
    thread.start()
    try:
        # At start it catches up the 14th; the 15th is not due before 04:30 on the 16th.
        wait_for(lambda: "2026-01-14 last" in calls(root), "the start-up catch-up")
        time.sleep(2.5)  # a few more runs of the one-second trigger
        assert calls(root) == ["2026-01-14 first", "2026-01-14 last"]

        clock.now = dt.datetime(2026, 1, 16, 4, 31, tzinfo=UTC)
        wait_for(lambda: "2026-01-15 last" in calls(root), "the run after 04:30")
    finally:
        daemon.request_stop()
        thread.join(timeout=60)
    assert result == [0]
    assert calls(root) == ["2026-01-14 first", "2026-01-14 last",
                           "2026-01-15 first", "2026-01-15 last"]
    assert ledger_rows(paths)[("2026-01-15", "last")] == "done"
    assert (paths.report(D(2026, 1, 15)) / "summary.json").exists()


def _start_helper_daemon(root: Path, now: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "daemon_helpers.py"), str(root), now],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_sigterm_mid_night_keeps_ledger_consistent_and_restart_completes(root):
    paths = add_raw(root, "2026-01-15")
    now = "2026-01-16T05:00:00+00:00"

    first = _start_helper_daemon(root, now)
    try:
        wait_for(lambda: (root / "slow-started").exists(), "the slow stage to start")
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 0, stderr
    assert "stopped after stage slow of night 2026-01-15; the next start resumes" in stderr
    rows = ledger_rows(paths)
    assert rows == {("2026-01-15", "first"): "done", ("2026-01-15", "slow"): "done"}

    second = _start_helper_daemon(root, now)
    try:
        wait_for(lambda: ledger_rows(paths).get(("2026-01-15", "last")) == "done",
                 "the restart to finish the night")
        second.send_signal(signal.SIGTERM)
        _, stderr = second.communicate(timeout=60)
    finally:
        second.kill()
    assert second.returncode == 0, stderr
    assert calls(root) == ["2026-01-15 first", "2026-01-15 slow", "2026-01-15 last"]
    assert set(ledger_rows(paths).values()) == {"done"}


def test_graceful_stop_turns_sigterm_into_a_request():
    before = signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        assert not stop.requested()
        os.kill(os.getpid(), signal.SIGTERM)
        wait_for(stop.requested, "the handler", timeout=5)
    assert signal.getsignal(signal.SIGTERM) is before


# -- one daemon per root, and status -----------------------------------------------------------

@pytest.fixture
def running_daemon(root):
    """``sleep.py daemon`` on an empty root, up until the test ends."""
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "sleep.py"), "daemon", "--root", str(root), "--config",
         str(CONFIG_DIR / "tiny.yaml"), "--set", "schedule.timezone=UTC", "--at", "04:30"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: lock_holder(Paths.at(root).daemon_lock) is not None or
                 proc.poll() is not None, "the daemon to take its lock")
        assert proc.poll() is None, proc.communicate()[1]
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        finally:
            proc.kill()


def test_second_daemon_is_refused_naming_the_first(root, running_daemon):
    result = run_cli("daemon", "--root", str(root), "--config", str(CONFIG_DIR / "tiny.yaml"))
    assert result.returncode == 3
    assert f"pid {running_daemon.pid}" in result.stderr
    assert "another sleep daemon" in result.stderr


def test_status_shows_the_next_scheduled_run(root, running_daemon):
    def next_run():
        status = json.loads(run_cli("status", "--root", str(root), "--json").stdout)
        return status["daemon"] and status["daemon"]["next_run"]

    wait_for(lambda: next_run() and dt.datetime.fromisoformat(next_run()) > dt.datetime.now(UTC),
             "the job store to hold the next run")
    when = dt.datetime.fromisoformat(next_run()).astimezone(UTC)
    assert (when.hour, when.minute) == (4, 30)
    status = json.loads(run_cli("status", "--root", str(root), "--json").stdout)
    assert status["daemon"]["pid"] == running_daemon.pid
    assert "next scheduled run: " in run_cli("status", "--root", str(root)).stdout


def test_sigterm_stops_an_idle_daemon_cleanly(root, running_daemon):
    running_daemon.send_signal(signal.SIGTERM)
    _, stderr = running_daemon.communicate(timeout=60)
    assert running_daemon.returncode == 0
    assert "daemon stopped" in stderr
    assert night_status(Paths.at(root))["daemon"] is None


def test_status_ignores_a_stale_daemon_lock_file(root):
    paths = Paths.at(root)
    paths.daemon_lock.write_text("pid 99999: daemon\n")  # left behind, nobody holds it
    assert night_status(paths)["daemon"] is None


# -- deploy files ----------------------------------------------------------------------------

UNITS = ["sleep-night.service", "sleep-night.timer", "sleep-daemon.service"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed on this machine")
def test_unit_files_pass_systemd_analyze_verify(tmp_path):
    # The units expect the clone in ~/sleep; verify checks that ExecStart's program exists,
    # so check them as installed for this clone.
    for unit in UNITS:
        text = (REPO / "deploy" / unit).read_text().replace("%h/sleep", str(REPO))
        (tmp_path / unit).write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", *UNITS], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    # Unknown keys are only warnings (exit 0), so any output is a failure too.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), \
        result.stdout + result.stderr
