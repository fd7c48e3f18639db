"""The nightly spine: dates, config, CLI exit codes, ledger, lock, atomic writes, report."""
from __future__ import annotations

import datetime as dt
import json
import os

import pytest
from conftest import run_cli

from core.atomic import TMP_MARK, atomic_dir, atomic_write_text, sweep_tmp
from core.config import CONFIG_DIR, DEFAULT_CONFIG, SleepConfig, load_config
from core.dates import parse_date
from core.errors import ConfigError, LockHeld, UsageError
from core.lock import NightLock, lock_holder
from core.paths import Paths
from pipeline.runner import run_night
from stages import Stage

# -- dates and config ------------------------------------------------------------------

@pytest.mark.parametrize("text", ["2026-02-30", "../../etc", "2026-1-5", "", "2026-13-01",
                                  "2026-01-15/../x"])
def test_parse_date_refuses_anything_but_a_calendar_date(text):
    with pytest.raises(UsageError):
        parse_date(text)


def test_parse_date_accepts_leap_day():
    assert parse_date("2028-02-29") == dt.date(2028, 2, 29)


def test_default_yaml_matches_schema_defaults():
    # The documented file and the schema must not drift apart.
    assert load_config(DEFAULT_CONFIG) == SleepConfig()


def test_tiny_config_is_valid():
    assert load_config(CONFIG_DIR / "tiny.yaml").runtime.device == "cpu"


def test_config_reports_every_bad_key_at_once(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest:\n  clip_secnds: 3\n  workers: -2\nbogus: {}\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    message = str(err.value)
    assert str(bad) in message
    assert "ingest.clip_secnds: unknown key" in message
    assert "ingest.workers" in message
    assert "bogus: unknown key" in message


def test_set_overrides_are_typed():
    cfg = load_config(None, ["ingest.workers=4", "ingest.write_clips=false"])
    assert cfg.ingest.workers == 4 and cfg.ingest.write_clips is False


def test_set_of_unknown_key_is_refused():
    with pytest.raises(ConfigError, match="ingest.nope: unknown key"):
        load_config(None, ["ingest.nope=1"])


def test_section_hash_changes_only_with_its_section():
    a, b = SleepConfig(), load_config(None, ["report.max_listed_files=3"])
    assert a.section_hash("ingest") == b.section_hash("ingest")
    assert a.section_hash("report") != b.section_hash("report")


# -- atomic writes and the lock --------------------------------------------------------

def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("system", ["linux", "portable"])
def test_atomic_dir_replaces_whole(tmp_path, monkeypatch, system):
    # "portable": no syncfs and no renameat2 (fsync per file; the old folder renamed aside).
    from core import atomic

    if system == "portable":
        monkeypatch.setattr(atomic, "_SYNCFS", None)
        monkeypatch.setattr(atomic, "_RENAMEAT2", None)
    else:
        assert atomic._SYNCFS is not None and atomic._RENAMEAT2 is not None  # the dev box, CI: Linux
    synced: list = []
    real_sync = atomic.sync_tree
    monkeypatch.setattr(atomic, "sync_tree", lambda folder: (synced.append(folder), real_sync(folder)))
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a").write_text("1")
    with atomic_dir(final) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["b"]
    assert list(tmp_path.iterdir()) == [final]  # the old folder is gone, nothing temporary left
    assert len(synced) == 2 and all(TMP_MARK in folder.name for folder in synced)  # before the rename


def test_sweep_removes_only_temporaries(tmp_path):
    atomic_write_text(tmp_path / "keep.json", "{}")
    (tmp_path / ".keep.json.tmp-123-abcd").write_text("partial")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".frames.tmp-9-ffff").mkdir()
    removed = sweep_tmp(tmp_path)
    assert len(removed) == 2
    assert [p.name for p in tmp_path.rglob("*")] == ["keep.json", "sub"] or \
        sorted(p.name for p in tmp_path.rglob("*")) == ["keep.json", "sub"]


def test_second_lock_names_the_holder(tmp_path):
    with NightLock(tmp_path / ".sleep.lock", "night 2026-01-01"):
        assert "night 2026-01-01" in lock_holder(tmp_path / ".sleep.lock")
        with pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
            with NightLock(tmp_path / ".sleep.lock", "other"):
                pass
    assert lock_holder(tmp_path / ".sleep.lock") is None


# -- the runner with stages defined here -------------------------------------------------

CALLS: list[str] = []


def stage_ok(night):
    CALLS.append("ok")
    return {"files": 2, "metrics": {"loss": 0.5}}


def stage_boom(night):
    CALLS.append("boom")
    raise ValueError("bad thing")


TEST_STAGES = [
    Stage("first", "test_spine:stage_ok", ("ingest",), description="First"),
    Stage("second", "test_spine:stage_boom", ("report",), needs=("first",)),
    Stage("third", "test_spine:stage_ok", ("report",), needs=("second",)),
]


@pytest.fixture
def day_root(root):
    Paths.at(root).raw(dt.date(2026, 1, 15)).mkdir(parents=True)
    return root


def test_rerun_skips_done_stages_and_force_redoes_them(day_root):
    CALLS.clear()
    stages = TEST_STAGES[:1]
    date, paths = dt.date(2026, 1, 15), Paths.at(day_root)
    assert run_night(date, SleepConfig(), paths, stages=stages, device="cpu").states == {"first": "done"}
    assert run_night(date, SleepConfig(), paths, stages=stages, device="cpu").states == {"first": "skipped"}
    assert run_night(date, SleepConfig(), paths, stages=stages, device="cpu", force=True).states == {"first": "done"}
    assert CALLS == ["ok", "ok"]


def test_config_change_reruns_stage(day_root):
    CALLS.clear()
    date, paths = dt.date(2026, 1, 15), Paths.at(day_root)
    run_night(date, SleepConfig(), paths, stages=TEST_STAGES[:1], device="cpu")
    changed = load_config(None, ["ingest.clip_seconds=5"])
    assert run_night(date, changed, paths, stages=TEST_STAGES[:1], device="cpu").states == {"first": "done"}


def test_failed_stage_is_recorded_and_blocks_dependants(day_root):
    date, paths = dt.date(2026, 1, 15), Paths.at(day_root)
    outcome = run_night(date, SleepConfig(), paths, stages=TEST_STAGES, device="cpu")
    assert outcome.states == {"first": "done", "second": "failed", "third": "blocked"}
    assert not outcome.ok
    summary = json.loads((paths.report(date) / "summary.json").read_text())
    assert summary["stages"]["second"]["status"] == "failed"
    assert "ValueError: bad thing" in summary["stages"]["second"]["error"]
    assert summary["stages"]["third"]["status"] == "not run"
    assert summary["first"] == {"files": 2}
    assert summary["metrics"]["first"] == {"loss": 0.5}
    page = (paths.report(date) / "index.html").read_text()
    assert "bad thing" in page and "Stage timings" in page
    assert "ValueError" in (paths.report(date) / "sleep.log").read_text()


def test_only_unknown_stage_is_usage_error(day_root):
    with pytest.raises(UsageError, match="unknown stage"):
        run_night(dt.date(2026, 1, 15), SleepConfig(), Paths.at(day_root), only=["nope"],
                  stages=TEST_STAGES, device="cpu")


def test_missing_raw_folder_is_usage_error(root):
    with pytest.raises(UsageError, match="no recordings"):
        run_night(dt.date(2026, 1, 16), SleepConfig(), Paths.at(root), stages=[], device="cpu")


def test_report_page_makes_no_network_requests(day_root):
    date, paths = dt.date(2026, 1, 15), Paths.at(day_root)
    run_night(date, SleepConfig(), paths, stages=TEST_STAGES[:1], device="cpu")
    page = (paths.report(date) / "index.html").read_text()
    for needle in ("http://", "https://", "//cdn", "<link", "@import"):
        assert needle not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


# -- the CLI --------------------------------------------------------------------------

@pytest.mark.parametrize("date", ["2026-02-30", "../../etc"])
def test_cli_bad_date_exits_2(root, date):
    result = run_cli("--date", date, "--root", str(root))
    assert result.returncode == 2
    assert "invalid date" in result.stderr


def test_cli_misspelt_config_key_exits_2_naming_it(root, tmp_path):
    Paths.at(root).raw(dt.date(2026, 1, 15)).mkdir(parents=True)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ingest:\n  clip_secnds: 3\n")
    result = run_cli("--date", "2026-01-15", "--root", str(root), "--config", str(cfg))
    assert result.returncode == 2
    assert "ingest.clip_secnds" in result.stderr


def test_cli_status_json_lists_the_night(day_root):
    run_night(dt.date(2026, 1, 15), SleepConfig(), Paths.at(day_root), stages=TEST_STAGES[:1],
              device="cpu")
    result = run_cli("status", "--root", str(day_root), "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["nights"]["2026-01-15"]["first"]["status"] == "done"
    assert status["running"] is None


def test_every_command_has_help():
    from cli.main import build_parser

    parser = build_parser()
    sub = parser._subparsers._group_actions[0]
    for name, command in sub.choices.items():
        assert command.description, name
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings}"


# -- worker processes' log records ------------------------------------------------------

def _log_in_worker(message):
    import logging

    logging.getLogger("sleep.test.worker").warning(message)
    return os.getpid()


def test_worker_records_reach_this_process_logs(caplog):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from core.logs import log_to_queue, worker_records

    context = multiprocessing.get_context("spawn")
    with caplog.at_level("WARNING", logger="sleep.test.worker"):
        with worker_records(context) as records, ProcessPoolExecutor(
                1, mp_context=context, initializer=log_to_queue, initargs=(records,)) as pool:
            pid = pool.submit(_log_in_worker, "hello from a worker").result()
    (record,) = [r for r in caplog.records if r.name == "sleep.test.worker"]
    assert record.getMessage() == "hello from a worker" and record.process == pid != os.getpid()


def test_worker_records_do_not_hang_on_half_a_message(monkeypatch):
    # A worker killed in the middle of sending a long record leaves half a message in the
    # pipe: the night must still end (logging.handlers.QueueListener would wait forever).
    import multiprocessing
    import struct
    import time

    from core import logs

    monkeypatch.setattr(logs, "WORKER_LOG_DRAIN_S", 1.0)
    started = time.monotonic()
    with logs.worker_records(multiprocessing.get_context("spawn")) as records:
        os.write(records._writer.fileno(), struct.pack("!i", 100_000) + b"x" * 10)
        time.sleep(0.3)  # the thread is now stuck reading the rest
    assert time.monotonic() - started < 5
