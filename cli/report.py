"""``sleep.py report --date D [--print | --output FILE] [--open]``: rebuild a night's report from
what is stored, and show it.

With ``memory.encryption: on`` the page under ``reports/`` is sealed like everything else
under the root: ``--print`` and ``--output`` give its plaintext (``sleep.py serve`` shows it
too, at ``/report/DATE``).
"""
from __future__ import annotations

import json
import sys
import webbrowser
from pathlib import Path

from core.atomic import atomic_write_text
from core.config import load_config
from core.dates import parse_date
from core.errors import UsageError
from core.paths import Paths

REPORT_HELP = "rebuild a night's report from the ledger and the memory (trains nothing), and show it"


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
                    "that night runs. With memory.encryption on the page is sealed on disk: read it "
                    "with --print or --output (or in sleep.py serve, at /report/DATE).")
    report.add_argument("--date", required=True, metavar="YYYY-MM-DD", help="the night to report")
    add_common(report)
    shown = report.add_mutually_exclusive_group()
    shown.add_argument("--print", action="store_true",
                       help="print the page's HTML (decrypted when the memory is sealed) instead of its path")
    shown.add_argument("--json", action="store_true",
                       help='print {"date", "report"} as JSON (and "output" with --output)')
    report.add_argument("--output", metavar="FILE",
                        help="also write a plain (decrypted) copy of the page to FILE, mode 0600; with a sealed "
                             "memory FILE must be outside the root, and whoever can read FILE reads the page")
    report.add_argument("--no-rebuild", action="store_true",
                        help="show the page as it was last written instead of writing it again")
    report.add_argument("--open", action="store_true",
                        help="open the page in the web browser (the --output copy when given; a sealed "
                             "memory's page needs --output, as a browser cannot read the sealed file)")
    report.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from report.build import read_report, rebuild_report

    date = parse_date(args.date)
    paths = Paths.at(args.root)
    sealed = paths.vault.sealing
    output = Path(args.output).expanduser().absolute() if args.output else None
    if output is not None and sealed and output.resolve().is_relative_to(paths.root):
        raise UsageError(f"--output {output}: under the root of a sealed memory, where nothing is kept in "
                         "plain; write the copy outside it")
    if args.open and output is None and sealed:
        raise UsageError("--open: the page is sealed on disk and a browser cannot read it: add --output FILE "
                         f"to open a plain copy, or see it in sleep.py serve at /report/{date.isoformat()}")
    if args.no_rebuild:
        page = paths.report(date) / "index.html"
        if not page.is_file():
            raise UsageError(f"no report of {date} under {paths.root} ({page} does not exist); "
                             "leave out --no-rebuild to write it from the ledger")
    else:
        page = rebuild_report(date, load_config(args.config, args.overrides), paths)
    text = read_report(date, paths) if args.print or output is not None else None
    if output is not None:
        atomic_write_text(output, text)
    if args.print:
        _print_page(text)
    elif args.json:
        shown = {"date": date.isoformat(), "report": str(page)}
        print(json.dumps(shown | ({"output": str(output)} if output is not None else {})))
    else:
        print(f"report: {page}")
        if output is not None:
            print(f"plain copy: {output}")
    if args.open:
        webbrowser.open((output or page).as_uri())
    return 0


def _print_page(text: str) -> None:
    # As UTF-8 bytes whatever the terminal's locale: the page says it is UTF-8, and a
    # redirect to a file must keep it so.
    sys.stdout.flush()
    out = getattr(sys.stdout, "buffer", None)
    if out is None:
        sys.stdout.write(text)
        return
    out.write(text.encode("utf-8"))
    out.flush()
