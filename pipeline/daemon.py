"""``sleep.py daemon``: run the night every day at ``schedule.at`` and catch up missed nights.

A run at ``at`` on day D processes the night of D-1, and with it every earlier night that
has recordings in ``data/raw/`` but is not complete in the ledger, oldest first, back to
``schedule.catch_up_days`` days. The same catch-up runs when the daemon starts, so nights
missed while it was down, the machine was off, or the phone synced late are not lost.
``--once`` does one such run for yesterday and exits (systemd timers and cron).

One scheduler per root: the daemon holds ``.sleep-daemon.lock`` for its whole life, and
each night still takes the night lock through :func:`~pipeline.runner.run_night`, so a
manual ``sleep.py run`` and the daemon never run a night at the same time.

The scheduler is APScheduler 3.x's ``BlockingScheduler`` with its job in a SQLAlchemy job
store in the memory database (``apscheduler_jobs``), where ``sleep.py status`` reads the
next run time. The job's state is pickled there, so it holds only a reference to
:func:`scheduled_catch_up` and the root; the live :class:`Daemon` is found by root.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import threading
import zoneinfo
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from core.config import SleepConfig, parse_clock_time
from core.errors import LockHeld, SleepError
from core.lock import NightLock, lock_holder
from core.paths import Paths
from core.signals import GracefulStop
from core.vault import unlock
from memory import ledger
from memory.db import make_sessionmaker, open_database
from pipeline.launch import run_night_on_processes
from pipeline.runner import NightOutcome, run_night
from stages import STAGES, Stage

log = logging.getLogger(__name__)

JOB_ID = "sleep-nightly"
JOB_TABLE = "apscheduler_jobs"
DAEMON_WHAT = "daemon"
# APScheduler sleeps until the next run on a monotonic clock, which stands still while the
# machine is suspended: a wait started before the laptop slept would end hours after the
# planned time (agronholm/apscheduler#794). A no-op job every few minutes bounds every
# wait, so a night missed during suspend starts within this many seconds of waking.
WAKE_SECONDS = 300


# -- which nights are due (pure functions) ------------------------------------------------

def latest_due_night(now: dt.datetime, at: dt.time) -> dt.date:
    """The newest night whose run time has passed.

    The run at ``at`` on day D processes the night of D-1, so before ``at`` the newest due
    night is D-2. A run that fires late, even after midnight, still gets its own night.

    Args:
        now: the current time in the schedule's time zone.
        at: the daily run time.
    Returns:
        the date of that night.
    """
    return now.date() - dt.timedelta(days=1 if now.time() >= at else 2)


def night_is_complete(done: Iterable[str], stage_names: Sequence[str]) -> bool:
    """A night is complete when every stage of the list is ``done`` in the ledger.

    The config hash is deliberately ignored: changing the config must not make the daemon
    redo a week of nights (``sleep.py run --date D`` redoes one on request).
    """
    done = set(done)
    return all(name in done for name in stage_names)


def days_to_catch_up(raw_dates: Iterable[dt.date], done_by_date: Mapping[dt.date, Iterable[str]],
                     stage_names: Sequence[str], newest: dt.date, limit: int) -> list[dt.date]:
    """The nights a run should process, oldest first.

    Args:
        raw_dates: dates that have a ``data/raw/{date}`` folder.
        done_by_date: the names of the stages the ledger has as ``done``, per date.
        stage_names: the night's stages (any list; with none, every night is complete).
        newest: the newest night due (yesterday for a run at the scheduled time).
        limit: how many days before ``newest`` are still caught up.
    Returns:
        dates in ``[newest - limit, newest]`` with recordings and not complete.
    """
    oldest = newest - dt.timedelta(days=limit)
    return sorted(d for d in set(raw_dates)
                  if oldest <= d <= newest
                  and not night_is_complete(done_by_date.get(d, ()), stage_names))


def done_stages_by_date(paths: Paths) -> dict[dt.date, set[str]]:
    """Read the ledger: ``{date: names of the stages done}``."""
    if not paths.database.exists():
        return {}
    engine = open_database(paths.database)
    try:
        with make_sessionmaker(engine)() as session:
            nights = ledger.all_nights(session)
    finally:
        engine.dispose()
    return {dt.date.fromisoformat(day): {s.stage for s in states if s.status == "done"}
            for day, states in nights.items()}


# -- one run: catch up ---------------------------------------------------------------------

@dataclass
class CatchUp:
    """What one run did: the nights it planned and the outcome of each it ran."""

    planned: list[dt.date]
    outcomes: list[NightOutcome] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stopped: bool = False
    locked: str | None = None

    @property
    def ok(self) -> bool:
        return not self.errors and self.locked is None and all(o.ok for o in self.outcomes)


# The live daemon of each root, for the persisted job (see the module docstring).
_DAEMONS: dict[str, "Daemon"] = {}


def scheduled_catch_up(root: str) -> None:
    """The job the scheduler runs: catch up the nights due now under ``root``."""
    daemon = _DAEMONS.get(root)
    if daemon is None:
        log.warning("no daemon for %s in this process; job ignored", root)
        return
    daemon.run_due_nights()


def _wake() -> None:
    """Does nothing: its only purpose is to bound the scheduler's sleep (``WAKE_SECONDS``)."""


class Daemon:
    """The nightly scheduler of one root.

    Args:
        cfg: the validated config (``cfg.schedule`` drives the timing).
        paths: the layout under the root.
        stages: the stage list (tests pass their own); default :data:`STAGES`.
        device: ``cpu``/``cuda``; ``None`` takes ``cfg.runtime.device``.
        clock: returns the current aware datetime (tests pass a fake one).
        trigger: an APScheduler trigger replacing the daily one (tests use a short interval).
    """

    def __init__(self, cfg: SleepConfig, paths: Paths, *, stages: list[Stage] | None = None,
                 device: str | None = None, clock: Callable[[], dt.datetime] | None = None,
                 trigger=None):
        self.cfg = cfg
        self.paths = paths
        self.stages = list(STAGES if stages is None else stages)
        self.device = device
        self.at = dt.time(*parse_clock_time(cfg.schedule.at))
        self.tz = zoneinfo.ZoneInfo(cfg.schedule.timezone) if cfg.schedule.timezone else None
        self._clock = clock
        self._trigger = trigger
        self._stop = threading.Event()
        self._state_lock = threading.Lock()
        self._scheduler = None
        self._stopper: threading.Thread | None = None

    # -- time and stopping --------------------------------------------------------------
    def now(self) -> dt.datetime:
        """The current time in the schedule's zone (the machine's when none is set)."""
        now = self._clock() if self._clock else dt.datetime.now(dt.timezone.utc)
        return now.astimezone(self.tz) if self.tz else now.astimezone()

    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Stop after the stage in progress commits; safe from any thread or a signal handler."""
        with self._state_lock:
            if self._stop.is_set():
                return
            self._stop.set()
            scheduler = self._scheduler
        if scheduler is not None:
            # shutdown(wait=True) waits for the running night, so it must not run in the
            # signal handler (the main thread); start() returns once it is done.
            self._stopper = threading.Thread(target=self._shutdown, args=(scheduler,),
                                             name="sleep-daemon-stop", daemon=True)
            self._stopper.start()

    @staticmethod
    def _shutdown(scheduler) -> None:
        while not scheduler.running:  # the signal may come while start() is setting up
            threading.Event().wait(0.05)
        scheduler.shutdown(wait=True)

    @contextlib.contextmanager
    def _hold_root(self, what: str) -> Iterator[None]:
        lock = NightLock(self.paths.daemon_lock, what)
        try:
            lock.__enter__()
        except LockHeld:
            holder = lock_holder(self.paths.daemon_lock) or "unknown"
            raise LockHeld(f"another sleep daemon runs on {self.paths.root} ({holder}); "
                           f"not starting a second one") from None
        try:
            yield
        finally:
            lock.__exit__(None, None, None)

    # -- the work -------------------------------------------------------------------------
    def catch_up(self, newest: dt.date) -> CatchUp:
        """Run every unfinished night with recordings from ``newest`` back, oldest first.

        Args:
            newest: the newest night to run.
        Returns:
            a :class:`CatchUp`; a night that fails does not stop the later ones.
        """
        limit = self.cfg.schedule.catch_up_days
        dates = days_to_catch_up(self.paths.raw_dates(), done_stages_by_date(self.paths),
                                 [s.name for s in self.stages], newest, limit)
        run = CatchUp(dates)
        if not dates:
            log.info("nothing to run: no unfinished night with recordings from %s to %s",
                     newest - dt.timedelta(days=limit), newest)
            return run
        log.info("nights to run, oldest first: %s", ", ".join(d.isoformat() for d in dates))
        for date in dates:
            if self.stop_requested():
                log.warning("stopped before night %s; the next start resumes", date)
                run.stopped = True
                break
            try:
                if self.cfg.runtime.gpus > 1:  # training on several processes: a torchrun child per night
                    outcome = run_night_on_processes(date, self.cfg, self.paths, processes=self.cfg.runtime.gpus,
                                                     device=self.device, should_stop=self.stop_requested)
                else:
                    outcome = run_night(date, self.cfg, self.paths, device=self.device,
                                        stages=self.stages, should_stop=self.stop_requested)
            except LockHeld as exc:
                # The night lock is per root: no later night can run either.
                log.warning("%s; trying again at the next run", exc)
                run.locked = str(exc)
                break
            except SleepError as exc:
                log.error("night %s: %s", date, exc)
                run.errors.append(f"night {date}: {exc}")
                continue
            run.outcomes.append(outcome)
            if self.stop_requested():
                last = next(reversed(outcome.states), None)
                where = f"after stage {last}" if last else "before the first stage"
                log.warning("stopped %s of night %s; the next start resumes", where, date)
                run.stopped = True
                break
            if outcome.disk_full:
                # Every later night would stop at its first write too; the next scheduled run
                # (and the daemon, which keeps running) tries again once there is room.
                log.error("night %s: %s; the later nights wait for the next run", date, outcome.disk_full)
                run.errors.append(f"night {date}: {outcome.disk_full}")
                break
            failed = [name for name, state in outcome.states.items() if state in ("failed", "blocked")]
            if failed:
                log.error("night %s: %s did not complete; the next run retries", date, ", ".join(failed))
            else:
                log.info("night %s: complete; report %s", date, outcome.report_path)
        return run

    def run_due_nights(self) -> CatchUp | None:
        """What each scheduled run (and the start) does: the nights due at :meth:`now`."""
        if self.stop_requested():
            return None
        return self.catch_up(latest_due_night(self.now(), self.at))

    def run_once(self) -> int:
        """Run yesterday and the missed nights now, then return the exit code (``--once``).

        Raises:
            LockHeld: a daemon or another night holds the root.
        """
        with self._hold_root("catch-up run (--once)"):
            run = self.catch_up(self.now().date() - dt.timedelta(days=1))
        if run.locked:
            raise LockHeld(run.locked)
        return 0 if run.ok else 1

    def run(self) -> int:
        """Hold the root and run nights at the scheduled time until asked to stop.

        Returns:
            0 after a requested stop (the night in progress ended after its current stage).
        Raises:
            LockHeld: another daemon holds the root.
        """
        with self._hold_root(DAEMON_WHAT):
            scheduler = self._build_scheduler()
            with self._state_lock:
                stopping = self._stop.is_set()  # a signal during set-up
                if not stopping:
                    self._scheduler = scheduler
            if not stopping:
                self._serve(scheduler)
        log.info("daemon stopped")
        return 0

    def _serve(self, scheduler) -> None:
        key = str(self.paths.root)
        _DAEMONS[key] = self
        log.info("daemon up on %s: nightly at %s %s, catching up %d day(s) back",
                 self.paths.root, self.cfg.schedule.at, scheduler.timezone,
                 self.cfg.schedule.catch_up_days)
        try:
            scheduler.start()  # returns after request_stop() has shut it down
            if self._stopper is not None:
                self._stopper.join()
        except KeyboardInterrupt:
            # Ctrl-C twice. The night runs in a worker thread that cannot be interrupted and
            # that the interpreter would wait for at exit: leave now. The kernel frees both
            # locks; the stage in progress reads "interrupted" and reruns.
            log.error("interrupted again: exiting now; the next start reruns the stage "
                      "that was running")
            logging.shutdown()
            os._exit(130)
        finally:
            _DAEMONS.pop(key, None)

    def _build_scheduler(self):
        from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED
        from apscheduler.jobstores.memory import MemoryJobStore
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from apscheduler.schedulers.blocking import BlockingScheduler
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        # "Running job ..." twice every WAKE_SECONDS would drown the log; misfire warnings
        # and job tracebacks are WARNING/ERROR and still show.
        logging.getLogger("apscheduler.executors.default").setLevel(logging.WARNING)
        schedule = self.cfg.schedule
        options = {"timezone": self.tz} if self.tz else {}  # None: the machine's zone
        scheduler = BlockingScheduler(
            jobstores={
                # The engine from open_database, so the job store gets the same WAL and busy
                # timeout as the nights writing to this database.
                "default": SQLAlchemyJobStore(engine=open_database(self.paths.database),
                                              tablename=JOB_TABLE),
                "wake": MemoryJobStore(),
            },
            **options)
        trigger = self._trigger or CronTrigger(hour=self.at.hour, minute=self.at.minute,
                                               timezone=scheduler.timezone)
        scheduler.add_job(
            "pipeline.daemon:scheduled_catch_up", trigger, args=[str(self.paths.root)],
            id=JOB_ID, name="sleep: nightly run", replace_existing=True,
            coalesce=True, max_instances=1, misfire_grace_time=schedule.misfire_grace_seconds,
            # First run at start: the catch-up of nights missed while the daemon was down.
            next_run_time=dt.datetime.now(scheduler.timezone))
        scheduler.add_job(_wake, IntervalTrigger(seconds=WAKE_SECONDS), id="wake",
                          jobstore="wake", replace_existing=True, coalesce=True, max_instances=1)
        scheduler.add_listener(self._after_job, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
        return scheduler

    def _after_job(self, event) -> None:
        if event.job_id != JOB_ID or self.stop_requested() or self._scheduler is None:
            return
        job = self._scheduler.get_job(JOB_ID)
        if job is not None and job.next_run_time is not None:
            log.info("next run: %s", job.next_run_time.isoformat(timespec="minutes"))


def run_daemon(cfg: SleepConfig, paths: Paths, *, once: bool = False,
               stages: list[Stage] | None = None, device: str | None = None,
               clock: Callable[[], dt.datetime] | None = None, trigger=None) -> int:
    """``sleep.py daemon``: run nightly until SIGTERM/SIGINT, or once with ``once=True``.

    Args:
        cfg: the validated config.
        paths: the layout under the root.
        once: run yesterday and the missed nights now, then return.
        stages, device, clock, trigger: see :class:`Daemon`.
    Returns:
        the exit code: 0 stopped on request (or, with ``once``, every night completed),
        1 a night did not complete (``once`` only).
    Raises:
        LockHeld: another daemon, or with ``once`` another night, holds the root.
    """
    # Once, at start: the daemon holds a sealed memory's key for its life (a passphrase
    # from systemd credentials is read at start, as the unit runs), and a missing one stops
    # it now rather than at 3 a.m.
    unlock(paths.root, cfg.memory)
    daemon = Daemon(cfg, paths, stages=stages, device=device, clock=clock, trigger=trigger)
    with GracefulStop(on_request=daemon.request_stop):
        return daemon.run_once() if once else daemon.run()


def daemon_status(paths: Paths) -> dict | None:
    """``{"pid", "next_run"}`` of the daemon running on ``paths.root``, else ``None``.

    The lock is checked, not just the file, so a daemon killed with -9 does not show.
    """
    holder = lock_holder(paths.daemon_lock)
    if not holder or not holder.endswith(f": {DAEMON_WHAT}"):
        return None
    match = re.match(r"pid (\d+)", holder)
    return {"pid": int(match[1]) if match else None, "next_run": _next_run(paths)}


def _next_run(paths: Paths) -> str | None:
    if not paths.database.exists():
        return None
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from sqlalchemy.exc import OperationalError

    store = SQLAlchemyJobStore(engine=open_database(paths.database), tablename=JOB_TABLE)
    try:
        when = store.get_next_run_time()
    except OperationalError:  # the daemon has not created its table yet
        when = None
    finally:
        store.shutdown()
    return when.astimezone().isoformat(timespec="seconds") if when else None
