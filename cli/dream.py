"""``sleep.py dream`` and ``sleep.py blend``: thin shells over :func:`api.dreams.dream_clips`.

With ``memory.encryption: on`` the pictures under ``reports/dreams/`` are sealed like
everything else under the root; ``--output DIR`` also writes plain copies where the user asks.
"""
from __future__ import annotations

import json
from pathlib import Path

DREAM_HELP = "dream a moment (or the way from one moment to another) into pictures"
BLEND_HELP = "blend two moments into one that never happened, as a picture"


def add_dream_commands(sub, add_common) -> None:
    """Register ``dream`` and ``blend`` on the ``sleep.py`` subparsers.

    Args:
        sub: the ``add_subparsers`` object of ``cli.main.build_parser``.
        add_common: ``cli.main._add_common`` (``--root``, ``--config``, ``--set``, ``-v``).
    """
    dream = sub.add_parser(
        "dream", help=DREAM_HELP,
        description="Decode a clip's embedding, as the memory recalls it, into N pictures; with --b, N "
                    "blends on the way from clip A to clip B. Pictures and their source moments are "
                    "written to reports/dreams/. Clip ids are those sleep.py query prints.")
    dream.add_argument("--a", type=int, required=True, metavar="CLIP", help="the clip to dream of")
    dream.add_argument("--b", type=int, metavar="CLIP", help="dream the way from A to this clip")
    dream.add_argument("--n", type=int, default=4, metavar="N", help="how many pictures (default 4)")
    _common(dream, add_common)
    dream.set_defaults(func=cmd_dream)

    blend = sub.add_parser(
        "blend", help=BLEND_HELP,
        description="Interpolate two clips' embeddings on the sphere (slerp) and decode the blend into a "
                    "picture, written to reports/dreams/ beside the two source moments.")
    blend.add_argument("--a", type=int, required=True, metavar="CLIP", help="the first clip")
    blend.add_argument("--b", type=int, required=True, metavar="CLIP", help="the second clip")
    blend.add_argument("--mix", type=float, default=0.5, metavar="T",
                       help="the share of B, 0 to 1 (default 0.5: half-way)")
    _common(blend, add_common)
    blend.set_defaults(func=cmd_blend)


def _common(parser, add_common) -> None:
    parser.add_argument("--seed", type=int, default=0, help="starting noise; the same seed, the same pictures")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: runtime.device in the config")
    parser.add_argument("--json", action="store_true", help="print what was written as JSON")
    parser.add_argument("--output", metavar="DIR",
                        help="also write plain (decrypted) copies of the pictures to DIR, mode 0600: with "
                             "memory.encryption on, those under reports/dreams/ are sealed and no viewer opens "
                             "them; DIR must then be outside the root")
    add_common(parser)


def _output_folder(args) -> Path | None:
    """``--output DIR``, refused under a sealed root (checked before any dreaming)."""
    from core.errors import UsageError
    from core.paths import Paths

    if not args.output:
        return None
    folder = Path(args.output).expanduser().absolute()
    paths = Paths.at(args.root)
    if paths.vault.sealing and folder.resolve().is_relative_to(paths.root):
        raise UsageError(f"--output {folder}: under the root of a sealed memory, where nothing is kept in plain; "
                         "give a folder outside it")
    return folder


def _copy_out(root, result: dict, folder: Path) -> list[str]:
    """Plain copies of the dreams and their source pictures in ``folder``; their paths."""
    from core.atomic import atomic_write_bytes
    from core.paths import Paths

    paths = Paths.at(root)
    wanted = [d["file"] for d in result["dreams"]] + [s["picture"] for s in result["sources"] if s["picture"]]
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for relative in wanted:
        # The folder's name keeps two dreams' copies in one DIR apart.
        copy = folder / f"{Path(result['folder']).name}-{Path(relative).name}"
        atomic_write_bytes(copy, paths.vault.read_bytes(paths.root / relative))
        copies.append(str(copy))
    return copies


def _print(result: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(result, indent=2))
        return 0
    ends = " and ".join(f"clip {s['clip_id']} ({s['date']})" for s in result["sources"])
    print(f"{len(result['dreams'])} {result['kind']} picture(s) of {ends}, by {result['decoder']} "
          f"({result['backend']}; from {result['vectors']}, completed by {result['completed_by']}):")
    for d in result["dreams"]:
        print(f"  {d['file']}" + (f"  (share of B {d['mix']:g})" if d["mix"] is not None else ""))
    for s in result["sources"]:
        print(f"  source clip {s['clip_id']}: {s['picture'] or '(no picture left on disk)'}")
    if result.get("copies"):
        print(f"plain copies: {', '.join(result['copies'])}")
    return 0


def cmd_dream(args) -> int:
    from api.dreams import dream_clips

    folder = _output_folder(args)
    result = dream_clips(args.root, args.a, args.b, n=args.n, config=args.config, overrides=args.overrides,
                         device=args.device, seed=args.seed)
    if folder is not None:
        result["copies"] = _copy_out(args.root, result, folder)
    return _print(result, args.json)


def cmd_blend(args) -> int:
    from api.dreams import dream_clips

    folder = _output_folder(args)
    result = dream_clips(args.root, args.a, args.b, mixes=[args.mix], config=args.config,
                         overrides=args.overrides, device=args.device, seed=args.seed)
    if folder is not None:
        result["copies"] = _copy_out(args.root, result, folder)
    return _print(result, args.json)
