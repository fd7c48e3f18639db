"""Run one night: the stages in order, each recorded in the ledger, then the report."""
from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from core.atomic import sweep_tmp
from core.config import SleepConfig
from core.device import resolve_device
from core.diskfull import disk_full_in
from core.errors import UsageError
from core.filesystems import refuse_network_filesystem
from core.lock import NightLock
from core.logs import night_log
from core.paths import Paths
from core.vault import unlock
from memory import ledger
from memory.checkpoints import record_checkpoints
from memory.db import make_sessionmaker, open_database
from stages import STAGES, Night, Stage, config_hash

log = logging.getLogger(__name__)


@dataclass
class NightOutcome:
    """What a night did: per stage ``done``, ``skipped`` (already done), ``failed`` or ``blocked``."""

    date: dt.date
    states: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    report_path: str | None = None
    stopped_early: bool = False
    # A write found no room (``core.diskfull``): what and where. The night stopped there.
    disk_full: str | None = None

    @property
    def ok(self) -> bool:
        return not self.disk_full and not any(s in ("failed", "blocked") for s in self.states.values())


def select_stages(only: list[str] | None, stages: list[Stage]) -> list[Stage]:
    if not only:
        return list(stages)
    known = {s.name for s in stages}
    unknown = [n for n in only if n not in known]
    if unknown:
        raise UsageError(f"--only: unknown stage(s) {', '.join(unknown)}; "
                         f"stages are: {', '.join(s.name for s in stages) or '(none)'}")
    return [s for s in stages if s.name in only]


def run_night(
    date: dt.date,
    cfg: SleepConfig,
    paths: Paths,
    *,
    only: list[str] | None = None,
    force: bool = False,
    device: str | None = None,
    stages: list[Stage] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> NightOutcome:
    """Run the night of ``date`` under ``paths.root``.

    Args:
        date: the day whose recordings are in ``data/raw/{date}/``.
        cfg: the validated config.
        paths: the layout under the root.
        only: run just these stages (by name).
        force: redo stages the ledger already has as done.
        device: ``cpu``/``cuda``; ``None`` takes ``cfg.runtime.device``.
        stages: the stage list (tests pass their own); default :data:`STAGES`.
        should_stop: asked between stages; ``True`` ends the night cleanly (SIGTERM).
    Returns:
        a :class:`NightOutcome`; the report is written whatever happened (if there is room
        for it). A stage that found the disk full is recorded as failed with a message
        naming the file, and the night stops there: every later write would fail too.
    Raises:
        UsageError: no recordings folder, unknown stage, unusable device.
        MasterKeyError: the memory is sealed and its key cannot be had (nothing is written).
        LockHeld: another night runs on this root.
        DiskFull: no room outside any stage (the database, the log), naming the file.
    """
    stages = STAGES if stages is None else stages
    selected = select_stages(only, stages)
    raw = paths.raw(date)
    if not raw.is_dir():
        raise UsageError(f"no recordings for {date}: {raw} is not a folder")
    device = resolve_device(device or cfg.runtime.device)
    # Before the lock file and the night's log are made there: open_database would refuse
    # a network filesystem too, but only after those two were written to it.
    refuse_network_filesystem(paths.memory)
    # A sealed memory is unlocked here, before the lock file, the log or the database is
    # touched: a missing or wrong passphrase, or a config that disagrees with the memory
    # (encryption on without a key, off with one), stops the night with nothing written.
    unlock(paths.root, cfg.memory)
    outcome = NightOutcome(date)
    try:
        _run_locked(date, cfg, paths, selected, stages, force, device, should_stop, outcome)
    except Exception as exc:
        full = disk_full_in(exc, database=paths.database, folder=paths.root)
        if full is None or full is exc:
            raise
        raise full from exc
    return outcome


def _run_locked(date: dt.date, cfg: SleepConfig, paths: Paths, selected: list[Stage],
                stages: list[Stage], force: bool, device: str, should_stop: Callable[[], bool],
                outcome: NightOutcome) -> None:
    with NightLock(paths.lock, f"night {date}"), night_log(paths.report(date) / "sleep.log"):
        engine = open_database(paths.database)
        Session = make_sessionmaker(engine)
        night = Night(date, cfg, paths, engine, Session, device, logging.getLogger("sleep.night"))
        log.info("night %s: root %s, device %s, stages %s", date, paths.root, device,
                 ", ".join(s.name for s in selected) or "(none)")
        for folder in (paths.clips(date), paths.frames(date), paths.audio(date), paths.embeddings,
                       paths.checkpoints, paths.report(date)):
            for leftover in sweep_tmp(folder):
                log.info("removed %s left by an interrupted run", leftover)

        with Session() as session:
            for stage in selected:
                if should_stop():
                    log.warning("stop requested: ending the night before %s", stage.name)
                    outcome.stopped_early = True
                    break
                _run_stage(stage, night, session, stages, force, outcome)
                if outcome.disk_full:
                    log.error("the night stops after %s (every later stage would fail the same "
                              "way): %s", stage.name, outcome.disk_full)
                    break
        engine.dispose()

        from report.build import write_report

        try:
            outcome.report_path = str(write_report(date, cfg, paths, stages))
        except Exception as exc:
            full = disk_full_in(exc, database=paths.database, folder=paths.report(date))
            if full is None:
                raise
            outcome.disk_full = outcome.disk_full or str(full)
            log.error("no report: %s", full)


def _run_stage(stage: Stage, night: Night, session, stages: list[Stage], force: bool,
               outcome: NightOutcome) -> None:
    day = night.day
    wanted_hash = config_hash(stage, night.cfg, stages)
    by_name = {s.name: s for s in stages}
    # A need missing from the stage list can never be done: blocked, not a crash.
    unmet = [n for n in stage.needs if n not in by_name or not ledger.is_done(
        session, day, n, config_hash(by_name[n], night.cfg, stages))]
    if unmet:
        outcome.states[stage.name] = "blocked"
        outcome.errors[stage.name] = f"needs {', '.join(unmet)}, not done with this config"
        log.error("%s: blocked: %s", stage.name, outcome.errors[stage.name])
        return
    if not force and ledger.is_done(session, day, stage.name, wanted_hash):
        previous = ledger.get(session, day, stage.name)
        night.results[stage.name] = previous.result or {}
        outcome.states[stage.name] = "skipped"
        log.info("%s: already done (config %s); --force redoes it", stage.name, wanted_hash)
        return

    ledger.mark_started(session, day, stage.name, wanted_hash)
    log.info("%s: started", stage.name)
    started = time.perf_counter()
    try:
        result = stage.function()(night) or {}
    except Exception as exc:  # a failed stage is recorded; the night goes on with the rest
        seconds = time.perf_counter() - started
        full = disk_full_in(exc, database=night.paths.database, folder=night.paths.root)
        if full is None:
            message = f"{type(exc).__name__}: {exc}"
            log.exception("%s: failed after %.1fs: %s", stage.name, seconds, message)
        else:  # not a bug: one line, the traceback in the night's log only
            message = outcome.disk_full = str(full)
            log.error("%s: failed after %.1fs: %s", stage.name, seconds, message)
            log.debug("%s: the failed write", stage.name, exc_info=exc)
        try:
            ledger.mark_finished(session, day, stage.name, seconds=seconds, error=message)
        except Exception as ledger_exc:
            # The database is full too: the row stays "running", which the next run
            # takes as interrupted and redoes, as it would this failure.
            if full is None or disk_full_in(ledger_exc, database=night.paths.database,
                                            folder=night.paths.root) is None:
                raise
            session.rollback()
            log.error("%s: its failure could not be recorded: %s", stage.name, ledger_exc)
        outcome.states[stage.name] = "failed"
        outcome.errors[stage.name] = message
        outcome.seconds[stage.name] = seconds
        return
    seconds = time.perf_counter() - started
    # The checkpoints the stage wrote are in place: their sums go in before the stage counts
    # as done (a night stopped in between records them at its rerun's first stage end).
    record_checkpoints(session, night.paths)
    ledger.mark_finished(session, day, stage.name, seconds=seconds, result=result)
    night.results[stage.name] = result
    outcome.states[stage.name] = "done"
    outcome.seconds[stage.name] = seconds
    log.info("%s: done in %.1fs", stage.name, seconds)
