"""``sleep.py report --date D [--open]``: rebuild a night's report from what is stored."""
from __future__ import annotations

import json
import webbrowser

from core.config import load_config
from core.dates import parse_date
from core.paths import Paths

REPORT_HELP = "rebuild a night's report from the ledger and the memory (trains nothing)"


def add_report_command(sub, add_common) -> None:
    """Register ``report`` on the ``sleep.py`` subparsers.

    Args:
        sub: the ``add_subparsers`` object of ``cli.main.build_parser``.
        add_common: ``cli.main._add_common`` (``--root``, ``--config``, ``--set``, ``-v``).
    """
    report = sub.add_parser(
        "report", help=REPORT_HELP,
        description="Write reports/DATE/summary.json and index.html again from the ledger and the "
                    "memory, without running any stage: after an upgrade of the report, or to see a "
                    "night set against the nights that came after it were recorded. Refused while "
                    "that night runs.")
    report.add_argument("--date", required=True, metavar="YYYY-MM-DD", help="the night to report")
    add_common(report)
    report.add_argument("--open", action="store_true", help="open the page in the web browser")
    report.add_argument("--json", action="store_true", help='print {"date", "report"} as JSON')
    report.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from report.build import rebuild_report

    date = parse_date(args.date)
    page = rebuild_report(date, load_config(args.config, args.overrides), Paths.at(args.root))
    if args.json:
        print(json.dumps({"date": date.isoformat(), "report": str(page)}))
    else:
        print(f"report: {page}")
    if args.open:
        webbrowser.open(page.as_uri())
    return 0
