"""``sleep.py memory versions | reembed``: thin shells over :func:`api.versions` and :func:`api.reembed`."""
from __future__ import annotations

import json

REEMBED_HELP = ("embed earlier days again with a version's encoders (what the night's reembed stage "
                "does within memory.reembed.max_minutes); each space switches to the version once it "
                "covers every day")


def add_memory_group(sub, add_common) -> None:
    """Register ``memory versions`` and ``memory reembed`` on the ``sleep.py`` subparsers.

    Args:
        sub: the ``add_subparsers`` object of ``cli.main.build_parser``.
        add_common: ``cli.main._add_common`` (``--root``, ``--config``, ``--set``, ``-v``).
    """
    memory = sub.add_parser("memory", help="model versions of the memory: list them, re-embed into one",
                            description="Each night's encoders write new versions of the spaces; queries "
                                        "read the active one, the newest that covers every day.")
    group = memory.add_subparsers(dest="memory_command", metavar="SUBCOMMAND", required=True)

    versions = group.add_parser("versions", help="each space's versions, their coverage and the active one",
                                description="List every version of every space: clips and days it "
                                            "covers, days it still lacks, and which one queries read.")
    versions.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_common(versions, config=False)
    versions.set_defaults(func=cmd_versions)

    reembed = group.add_parser("reembed", help=REEMBED_HELP, description=REEMBED_HELP + ". Safe to stop "
                               "and rerun; refuses to run during a night.")
    reembed.add_argument("--space", metavar="S", help="only this space (vision_frame, vision, audio, shared "
                         "or sae; default: all)")
    reembed.add_argument("--version", metavar="V", help="fill this version, e.g. jepa@2026-01-16 "
                         "(default: each space's newest)")
    reembed.add_argument("--max-minutes", type=float, metavar="M",
                         help="stop starting new days after M minutes (default: no limit)")
    reembed.add_argument("--device", choices=["cpu", "cuda"],
                         help="where the encoders run (default: runtime.device in the config)")
    reembed.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_common(reembed)
    reembed.set_defaults(func=cmd_reembed)


def cmd_versions(args) -> int:
    from api import versions

    table = versions(args.root)
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    if not table:
        print("no vectors in the memory yet")
    for row in table:
        lacking = f", lacks {len(row['days_missing'])} day(s)" if row["days_missing"] else ""
        missing = f", {row['missing_clips']} clip(s) missing" if row["missing_clips"] else ""
        print(f"{'*' if row['active'] else ' '} {row['space']:<14} {row['version']:<26} "
              f"{row['clips']:>7} clips  {row['days']}/{row['days_total']} days{lacking}{missing}")
    if table:
        print("* active: the version queries read")
    return 0


def cmd_reembed(args) -> int:
    from api import reembed

    result = reembed(args.root, space=args.space, version=args.version, max_minutes=args.max_minutes,
                     device=args.device, config=args.config, overrides=args.overrides)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for space, r in result["spaces"].items():
        if "days_done" not in r:
            print(f"{space:<14} {r['note']}")
            continue
        print(f"{space:<14} {r['version']:<26} {r['days_done']} day(s) done, {r['days_left']} left, "
              f"{r['clips']} clips, {r['missing']} missing, {r['seconds']:.1f}s; active: {r['active']}")
    if result["stopped_early"]:
        print("stopped at --max-minutes; run again to continue")
    return 0
