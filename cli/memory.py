"""``sleep.py query | forget | doctor``: thin shells over :mod:`memory.search`,
:mod:`memory.forget` and :mod:`memory.doctor`; ``--json`` prints what those functions return.
"""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from core.dates import parse_date
from core.errors import UsageError
from core.paths import Paths

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
    what.add_argument("--image", metavar="PATH", help="an image file (needs a trained vision model)")
    what.add_argument("--audio", metavar="PATH", help="a sound file (needs a trained audio model)")
    what.add_argument("--fragment", metavar="PATH",
                      help="an image of part of a moment (a crop, a glimpse, a blur): completed into "
                           "a whole clip by the reconstructor, then searched in the space vision")
    what.add_argument("--text", metavar="WORDS",
                      help="free text, such as 'a dog on the beach' (needs OpenCLIP weights on disk: "
                           "models.openclip.weights)")
    what.add_argument("--neuron", metavar="N[,N...]",
                      help="memory-trace neurons of the sparse autoencoder (space sae): the moments "
                           "whose trace these neurons carry the largest share of")
    query.add_argument("--topk", type=int, default=10, metavar="K", help="how many results (default 10)")
    query.add_argument("--from", dest="date_from", metavar="YYYY-MM-DD", help="first day searched")
    query.add_argument("--to", dest="date_to", metavar="YYYY-MM-DD", help="last day searched")
    query.add_argument("--space", choices=["vision", "audio", "shared", "sae", "openclip", "openclip_frame"],
                       help="embedding space (default: vision for --clip/--image/--fragment when it "
                            "exists, audio for --audio, sae for --neuron, clip for --text)")
    query.add_argument("--model-version", metavar="V",
                       help="search this model version (default: the space's latest)")
    query.add_argument("--modality", choices=["vision", "audio"],
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
                            description="Check every shard against its database rows and every "
                                        "file the database names; --repair fixes what does not "
                                        "match. Exit 1 when problems remain.")
    doctor.add_argument("--repair", action="store_true",
                        help="make database and files agree (drop rows whose files are gone, "
                             "delete files no row knows, compact shards)")
    doctor.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_common(doctor, config=False)
    doctor.set_defaults(func=cmd_doctor)


def _encoder(module: str, function: str, flag: str):
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise UsageError(f"{flag}: {module} is not part of this install yet; query with "
                             f"--clip ID instead") from None
        raise
    fn = getattr(mod, function, None)
    if fn is None:
        raise UsageError(f"{flag}: {module} has no {function}(); query with --clip ID instead")
    return fn


def _call_encoder(fn, flag: str, *args):
    try:
        return fn(*args)
    except FileNotFoundError as exc:
        raise UsageError(f"{flag}: no trained model yet ({exc}); run a night first") from None


def _query_vector(args, cfg, paths: Paths, engine):
    """``(space, model_version, vector, exclude_clip_ids)`` for the query's flag."""
    from memory.search import clip_vector
    from memory.store import spaces

    if args.clip is not None:
        have = spaces(engine)
        if not have:
            raise UsageError(f"{paths.database}: no embeddings in the memory yet")
        space = args.space or have[0]
        found = clip_vector(engine, paths, space, args.clip, args.model_version)
        if found is None:
            raise UsageError(f"--clip {args.clip}: no {space} vector for that clip")
        return space, found[0], found[1], (args.clip,)

    if args.neuron is not None:
        return _neuron_vector(args, engine)
    if args.fragment is not None:
        return _fragment_vector(args, cfg, paths, engine)
    if args.text is not None:
        return _text_vector(args, cfg, engine)

    from pipeline.runner import resolve_device

    device = resolve_device(cfg.runtime.device)
    if args.image is not None:
        flag, path, modality = "--image", Path(args.image), "vision"
        encode = _encoder("stages.vision", "encode_image_file", flag)
    else:
        flag, path, modality = "--audio", Path(args.audio), "audio"
        encode = _encoder("stages.audio", "encode_audio_file", flag)
    if not path.is_file():
        raise UsageError(f"{flag} {path}: no such file")
    version, vector = _call_encoder(encode, flag, path, cfg, paths, device)
    space = args.space or modality
    if space == "shared":
        to_shared = _encoder("stages.align", "to_shared", "--space shared")
        version, vector = _call_encoder(to_shared, "--space shared", vector, modality, cfg, paths,
                                        device)
    elif space != modality:
        raise UsageError(f"--space {space}: a {flag[2:]} query searches {modality} or shared")
    return space, args.model_version or version, vector, ()


def _fragment_vector(args, cfg, paths: Paths, engine):
    from pipeline.runner import resolve_device

    if (args.space or "vision") != "vision":
        raise UsageError(f"--space {args.space}: a fragment is completed into the space vision")
    path = Path(args.fragment)
    if not path.is_file():
        raise UsageError(f"--fragment {path}: no such file")
    encode = _encoder("stages.reconstruct", "encode_fragment_file", "--fragment")
    version, vector = _call_encoder(encode, "--fragment", path, cfg, paths, engine,
                                    resolve_device(cfg.runtime.device))
    return "vision", args.model_version or version, vector, ()


def _text_vector(args, cfg, engine):
    """The text's OpenCLIP embedding, to search the clips embedded with the same weights."""
    from memory.store import space_dim
    from pipeline.runner import resolve_device

    if (args.space or "openclip") not in ("openclip", "openclip_frame"):
        raise UsageError(f"--space {args.space}: text is searched in the space openclip (or openclip_frame)")
    if not args.text.strip():
        raise UsageError("--text: empty")
    from core.errors import ConfigError
    from stages.openclip import load_text_encoder as load
    try:
        clip = load(cfg.models.openclip, resolve_device(cfg.runtime.device))
    except ConfigError as exc:
        raise UsageError(f"--text: {exc}") from None
    space = args.space or "openclip"
    if space_dim(engine, space, clip.version) is None:
        raise UsageError(f"--text: no frames embedded with these weights ({clip.version}) yet; run a night "
                         f"with models.openclip.weights set")
    return space, clip.version, clip.embed_text(args.text), ()


def _neuron_vector(args, engine):
    """The sum of the named neurons' one-hot vectors in the ``sae`` space."""
    import numpy as np

    from memory.store import latest_version, space_dim

    try:
        neurons = [int(n) for n in args.neuron.split(",") if n.strip()]
    except ValueError:
        raise UsageError(f"--neuron {args.neuron}: expected neuron numbers such as 12 or 12,40") from None
    if not neurons:
        raise UsageError("--neuron: name at least one neuron")
    if (args.space or "sae") != "sae":
        raise UsageError(f"--space {args.space}: neurons live in the space sae")
    version = args.model_version or latest_version(engine, "sae")
    dim = space_dim(engine, "sae", version) if version else None
    if dim is None:
        raise UsageError("--neuron: no memory traces yet (the sae stage has not run)")
    bad = [n for n in neurons if not 0 <= n < dim]
    if bad:
        raise UsageError(f"--neuron {bad[0]}: {version} has neurons 0 to {dim - 1}")
    vector = np.zeros(dim, np.float32)
    vector[neurons] = 1.0
    return "sae", version, vector, ()


def run_query(args) -> list[dict]:
    """The hits of ``sleep.py query`` as dicts (what ``--json`` prints)."""
    from core.config import load_config
    from memory.db import open_database
    from memory.search import search

    cfg = load_config(args.config, args.overrides)
    paths = Paths.at(args.root)
    if not paths.database.exists():
        raise UsageError(f"{paths.database}: no memory yet (run a night first)")
    date_from = parse_date(args.date_from).isoformat() if args.date_from else None
    date_to = parse_date(args.date_to).isoformat() if args.date_to else None
    if args.topk < 1:
        raise UsageError(f"--topk {args.topk}: must be at least 1")
    engine = open_database(paths.database)
    try:
        space, version, vector, exclude = _query_vector(args, cfg, paths, engine)
        try:
            hits = search(engine, paths, space=space, query=vector, topk=args.topk,
                          model_version=version, date_from=date_from, date_to=date_to,
                          modality=args.modality, source=args.source,
                          exclude_clip_ids=exclude, options=cfg.memory.search)
        except ValueError as exc:
            raise UsageError(f"query: {exc}") from None
    finally:
        engine.dispose()
    if args.neuron is not None:  # a moment where none of the neurons fires is no match
        hits = [h for h in hits if h.score > 0]
    return [h.as_dict() for h in hits]


def cmd_query(args) -> int:
    hits = run_query(args)
    if args.json:
        print(json.dumps(hits, indent=2))
        return 0
    if not hits:
        print("no matches")
    for h in hits:
        when = h["wall_start"].replace("T", " ") if h["wall_start"] else h["date"]
        print(f"{when:<19}  {h['score']:.3f}  {h['modality']:<6}  {h['source_path']} +{h['start_s']:.1f}s  "
              f"clip {h['clip_id']}  {h['frame_path'] or '-'}")
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
    from memory.forget import forget_day, plan_forget

    date = parse_date(args.date)
    paths = Paths.at(args.root)
    if not args.yes:
        plan = plan_forget(paths, date)
        _print_plan(plan, done=False)
        if not _confirm(plan):
            print("nothing removed")
            return 0
    removed = forget_day(paths, date)
    if args.json:
        print(json.dumps(removed, indent=2))
    else:
        _print_plan(removed, done=True)
    return 0


def cmd_doctor(args) -> int:
    from memory.doctor import doctor

    result = doctor(Paths.at(args.root), repair=args.repair)
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
