"""``sleep.py query | forget | doctor``: thin shells over :func:`api.query`, :func:`api.forget`
and :func:`api.doctor`; ``--json`` prints what those functions return.
"""
from __future__ import annotations

import json
import sys

from api.search import MODALITIES, SPACES
from core.errors import UsageError

FORGET_HELP = ("remove one day completely: its recordings (data/raw/DATE), clips, frames, "
               "audio, embeddings, database rows and report; other days are untouched")


def add_memory_commands(sub, add_common) -> None:
    """Register ``query``, ``forget`` and ``doctor`` on the ``sleep.py`` subparsers.

    Args:
        sub: the ``add_subparsers`` object of ``cli.main.build_parser``.
        add_common: ``cli.main._add_common`` (``--root``, ``--config``, ``--set``, ``-v``).
    """
    query = sub.add_parser("query", help="search the memory by example",
                           description="Find the moments most like a clip, an image, a sound, a fragment of a "
                                       "picture or a text, or those a memory-trace neuron fires for.")
    what = query.add_mutually_exclusive_group(required=True)
    what.add_argument("--clip", type=int, metavar="ID", help="a clip already in the memory "
                      "(its own vector; the clip itself is left out of the results)")
    what.add_argument("--image", metavar="PATH", help="an image file (needs a trained vision model); its best "
                      "hits are ordered by layout against each hit's keyframe (memory.search.layout_rerank)")
    what.add_argument("--audio", metavar="PATH", help="a sound file (needs a trained audio model)")
    what.add_argument("--fragment", metavar="PATH",
                      help="an image of part of a moment (a crop, a glimpse, a blur): completed into "
                           "a whole clip by the reconstructor, then searched in the space vision")
    what.add_argument("--text", metavar="WORDS",
                      help="free text, such as 'a dog on the beach' (needs OpenCLIP weights on disk: "
                           "models.openclip.weights)")
    what.add_argument("--journal", metavar="WORDS",
                      help="journal entries nearest in meaning to WORDS, such as 'coffee with my sister', each "
                           "with the clips recorded within journal.window_minutes of its time")
    what.add_argument("--neuron", action="append", metavar="ID|NAME",
                      help="a memory-trace neuron of the sparse autoencoder (space sae), by its id or "
                           "the name given to it (sleep.py neuron list); repeat it, or separate by "
                           "commas, for several: the moments whose trace they carry the largest share of")
    query.add_argument("--not", dest="negative", action="append", metavar="ID|NAME",
                       help="with --neuron: rank down the moments these neurons fire for (the score is "
                            "the wanted neurons' activations minus these); repeatable")
    query.add_argument("--topk", type=int, default=10, metavar="K", help="how many results (default 10)")
    query.add_argument("--from", dest="date_from", metavar="YYYY-MM-DD", help="first day searched")
    query.add_argument("--to", dest="date_to", metavar="YYYY-MM-DD", help="last day searched")
    query.add_argument("--space", choices=SPACES,
                       help="embedding space (default: vision for --clip/--image/--fragment when it "
                            "exists, audio for --audio, sae for --neuron, openclip for --text)")
    query.add_argument("--model-version", metavar="V",
                       help="search this model version (default: the space's active one; see "
                            "sleep.py memory versions)")
    query.add_argument("--modality", choices=MODALITIES,
                       help="only results from this sense (useful in the shared space)")
    query.add_argument("--source", metavar="TEXT",
                       help="only clips whose recording's path contains TEXT")
    query.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_common(query)
    query.set_defaults(func=cmd_query)

    forget = sub.add_parser("forget", help=FORGET_HELP, description=FORGET_HELP + ". Model "
                            "checkpoints are kept. Refuses to run during a night.")
    forget.add_argument("--date", required=True, metavar="YYYY-MM-DD", help="the day to forget")
    forget.add_argument("--yes", action="store_true",
                        help="do not ask for confirmation (needed when not on a terminal)")
    forget.add_argument("--json", action="store_true", help="print what was removed as JSON")
    add_common(forget, config=False)
    forget.set_defaults(func=cmd_forget)

    doctor = sub.add_parser("doctor", help="check that the database, shards and files agree",
                            description="Check every shard against its database rows and checksums "
                                        "and every file the database names; --repair fixes what "
                                        "does not match (a damaged shard goes to memory/quarantine/). "
                                        "Exit 1 when problems remain.")
    doctor.add_argument("--repair", action="store_true",
                        help="make database and files agree (drop rows whose files are gone, "
                             "delete files no row knows, compact shards)")
    doctor.add_argument("--read-data", action="store_true",
                        help="read every shard whole against its checksums (by default each is "
                             "read once, the first time a doctor meets it)")
    doctor.add_argument("--workers", type=int, metavar="N",
                        help="processes that share the scans of files and rows (default: one more "
                             "than the cores, up to 8, for a memory of a million files or more; else 1)")
    doctor.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_common(doctor, config=False)
    doctor.set_defaults(func=cmd_doctor)


def cmd_query(args) -> int:
    from api import query

    if args.journal is not None:
        return _journal_query(args)
    hits = query(args.root, image=args.image, audio=args.audio, clip=args.clip, fragment=args.fragment,
                 neuron=args.neuron, negative=args.negative, text=args.text,
                 topk=args.topk, date_from=args.date_from, date_to=args.date_to, space=args.space,
                 modality=args.modality, source=args.source, model_version=args.model_version,
                 config=args.config, overrides=args.overrides)
    if args.json:
        print(json.dumps([h.as_dict() for h in hits], indent=2))
        return 0
    if not hits:
        print("no matches")
    for h in hits:
        when = h.wall_start.replace("T", " ") if h.wall_start else h.date
        episode = f"  episode {h.episode['index'] + 1}" if h.episode else ""  # numbered as the report does
        print(f"{when:<19}  {h.score:.3f}  {h.modality:<6}  {h.source_path} +{h.start_s:.1f}s  "
              f"clip {h.clip_id}{episode}  {h.frame_path or '-'}")
    return 0


def _journal_query(args) -> int:
    from api import journal_query
    from cli.journal import print_journal_hits

    for flag, value in (("--space", args.space), ("--modality", args.modality), ("--source", args.source),
                        ("--model-version", args.model_version), ("--not", getattr(args, "negative", None))):
        if value is not None:
            raise UsageError(f"{flag}: not used by --journal (entries are searched in the space text)")
    hits = [h.as_dict() for h in journal_query(args.root, args.journal, topk=args.topk, date_from=args.date_from,
                                               date_to=args.date_to, config=args.config, overrides=args.overrides)]
    if args.json:
        print(json.dumps(hits, indent=2))
    else:
        print_journal_hits(hits)
    return 0


def _confirm(plan: dict) -> bool:
    if not sys.stdin.isatty():
        raise UsageError("forget: not on a terminal; add --yes to confirm")
    answer = input(f"forget {plan['date']} for good? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def _print_plan(plan: dict, done: bool) -> None:
    verb = "removed" if done else "would remove"
    rows = ", ".join(f"{n} {table}" for table, n in plan["database"].items() if n)
    print(f"{plan['date']}: {verb} {rows or 'no database rows'}")
    for rel in plan["files"]:
        print(f"  {rel}")


def cmd_forget(args) -> int:
    from api import forget, plan_forget

    if not args.yes:
        plan = plan_forget(args.root, args.date)
        _print_plan(plan, done=False)
        if not _confirm(plan):
            print("nothing removed")
            return 0
    removed = forget(args.root, args.date)
    if args.json:
        print(json.dumps(removed, indent=2))
    else:
        _print_plan(removed, done=True)
    return 0


def cmd_doctor(args) -> int:
    from api import doctor

    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: give 1 or more")
    result = doctor(args.root, repair=args.repair, workers=args.workers, read_data=args.read_data)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for line in result["problems"]:
            print(f"problem: {line}")
        for line in result["repaired"]:
            print(f"repaired: {line}")
        for line in result["notes"]:
            print(f"note: {line}")
        if not result["problems"]:
            print("memory is consistent")
    return 0 if result["ok"] else 1
