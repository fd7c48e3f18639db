"""``sleep.py daemon``: the command line over :func:`pipeline.daemon.run_daemon`."""
from __future__ import annotations

import argparse
from typing import Callable

from core.config import load_config, parse_clock_time
from core.errors import UsageError
from core.paths import Paths

DAEMON_EPILOG = """\
Each run processes the previous calendar day and every earlier night with recordings in
data/raw/ that the ledger does not have as complete, oldest first, back to
schedule.catch_up_days. The daemon does such a run when it starts, too. SIGTERM or Ctrl-C
ends it after the stage in progress; the next start resumes. deploy/README.md shows how to
run it from systemd or cron.

exit codes: 0 stopped on request (with --once: every night completed), 1 a night did not
complete (--once), 2 usage or config error, 3 another daemon (or with --once, another
night) holds the root."""


def add_daemon_command(sub, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``daemon`` on the CLI's subparsers; ``add_common`` adds --root/--config/--set/-v."""
    daemon = sub.add_parser(
        "daemon", help="run every night at schedule.at and catch up missed nights",
        description="Run the night of the previous day every day at a fixed time (APScheduler),\n"
                    "and the nights missed while the machine was off or asleep.",
        epilog=DAEMON_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    daemon.add_argument("--at", metavar="HH:MM",
                        help="time of the nightly run (default: schedule.at in the config)")
    add_common(daemon)
    daemon.add_argument("--once", action="store_true",
                        help="run yesterday and any missed nights now, then exit "
                             "(for systemd timers and cron)")
    daemon.add_argument("--device", choices=["cpu", "cuda"],
                        help="where models train (default: runtime.device in the config)")
    daemon.set_defaults(func=cmd_daemon)


def cmd_daemon(args) -> int:
    from pipeline.daemon import run_daemon

    cfg = load_config(args.config, args.overrides)
    if args.at is not None:
        try:
            parse_clock_time(args.at)
        except ValueError as exc:
            raise UsageError(f"--at {args.at!r}: {exc}") from None
        cfg.schedule.at = args.at
    return run_daemon(cfg, Paths.at(args.root), once=args.once, device=args.device)
