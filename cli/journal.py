"""``sleep.py journal add "..." [--at HH:MM] [--date D]`` and the printed form of
``sleep.py query --journal``: thin shells over :func:`api.journal_add` and :func:`api.journal_query`."""
from __future__ import annotations

import json

ADD_HELP = ("append one entry to the day's journal (data/raw/DATE/journal.md) and store it; it is "
            "searchable at once when the text model is installed")


def add_journal_command(sub, add_common) -> None:
    """Register ``journal add`` on the ``sleep.py`` subparsers.

    Args:
        sub: the ``add_subparsers`` object of ``cli.main.build_parser``.
        add_common: ``cli.main._add_common`` (``--root``, ``--config``, ``--set``, ``-v``).
    """
    journal = sub.add_parser("journal", help="the journal: add an entry (search it with query --journal)",
                             description="A day's journal is data/raw/DATE/journal.md (or .txt), one entry "
                                         "a line, optionally led by its time: '08:15 coffee with Ana'.")
    group = journal.add_subparsers(dest="journal_command", metavar="SUBCOMMAND", required=True)
    add = group.add_parser("add", help=ADD_HELP, description=ADD_HELP + ".")
    add.add_argument("text", help="the entry, e.g. 'coffee with Ana'")
    add.add_argument("--at", metavar="HH:MM", help="when it happened (24-hour time; default: no time)")
    add.add_argument("--date", metavar="YYYY-MM-DD", help="the day it belongs to (default: today)")
    add.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_common(add)
    add.set_defaults(func=cmd_journal_add)


def cmd_journal_add(args) -> int:
    from api import journal_add

    added = journal_add(args.root, args.text, at=args.at, date=args.date, config=args.config,
                        overrides=args.overrides)
    if args.json:
        print(json.dumps(added, indent=2))
        return 0
    when = f" at {added['at']}" if added["at"] else ""
    print(f"{added['date']}{when}: {added['text']}  ({added['file']} line {added['line']}, entry {added['entry_id']})")
    if added["note"]:
        print(f"note: {added['note']}")
    return 0


def print_journal_hits(hits: list[dict]) -> None:
    """The text form of ``query --journal``: each entry with its time and score, its clips under it."""
    if not hits:
        print("no matching journal entries")
    for hit in hits:
        print(f"{hit['date']} {hit['at'] or '--:--'}  {hit['score']:.3f}  {hit['text']}  (entry {hit['entry_id']})")
        if hit["at"] and not hit["clips"]:
            print("    no clips recorded around then")
        for clip in hit["clips"]:
            print(f"    {clip['wall_start'].replace('T', ' ')}  {clip['minutes']:+.1f} min  "
                  f"{clip['source_path']} +{clip['start_s']:.1f}s  clip {clip['clip_id']}  {clip['frame_path'] or '-'}")
