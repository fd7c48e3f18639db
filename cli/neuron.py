"""``sleep.py neuron list | show | name | unname``: thin shells over :mod:`api.neurons`."""
from __future__ import annotations

import datetime as dt
import json

NEURON_HELP = "memory-trace neurons: list them, look at one, name them"


def add_neuron_group(sub, add_common) -> None:
    """Register ``neuron list|show|name|unname`` on the ``sleep.py`` subparsers.

    Args:
        sub: the ``add_subparsers`` object of ``cli.main.build_parser``.
        add_common: ``cli.main._add_common`` (``--root``, ``-v``).
    """
    neuron = sub.add_parser(
        "neuron", help=NEURON_HELP,
        description="Each neuron of the sparse autoencoder is a memory trace: the moments that make it "
                    "fire. A neuron keeps its id (and the name you give it) from night to night while "
                    "the network is retrained; find its moments with sleep.py query --neuron ID|NAME.")
    group = neuron.add_subparsers(dest="neuron_command", metavar="SUBCOMMAND", required=True)

    listing = group.add_parser("list", help="every neuron that fires: id, name, how often, its top moments",
                               description="Neurons of the active sae version, most often firing first.")
    listing.add_argument("--date", metavar="YYYY-MM-DD", help="count and rank only this day's moments")
    listing.add_argument("--moments", type=int, default=3, metavar="N", help="top moments per neuron (default 3)")
    listing.add_argument("--all", dest="include_silent", action="store_true",
                         help="also neurons that fire for no moment")
    listing.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_common(listing, config=False)
    listing.set_defaults(func=cmd_list)

    show = group.add_parser("show", help="one neuron: its name, history and top moments",
                            description="A neuron by id or name: when it was born and last seen, its "
                                        "match cosine night by night, how often it fires, its top moments.")
    show.add_argument("neuron", metavar="ID|NAME")
    show.add_argument("--moments", type=int, default=8, metavar="N", help="top moments (default 8)")
    show.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_common(show, config=False)
    show.set_defaults(func=cmd_show)

    name = group.add_parser("name", help="give a neuron a name", description="Name a neuron; the name is "
                            "kept in the memory and follows the neuron across nights. Renaming replaces it.")
    name.add_argument("neuron", metavar="ID|NAME")
    name.add_argument("name", metavar="NAME", help="e.g. kitchen (not only digits; no comma)")
    add_common(name, config=False)
    name.set_defaults(func=cmd_name)

    unname = group.add_parser("unname", help="remove a neuron's name")
    unname.add_argument("neuron", metavar="ID|NAME")
    add_common(unname, config=False)
    unname.set_defaults(func=cmd_unname)


def _when(moment: dict) -> str:
    if moment.get("wall_start"):
        return dt.datetime.fromisoformat(moment["wall_start"]).strftime("%Y-%m-%d %H:%M:%S")
    return f'{moment["date"]} +{moment["start_s"]:.0f}s'


def _moment_line(moment: dict) -> str:
    return (f'    {_when(moment):<19}  {moment["activation"]:.3f}  {moment["modality"]:<6}  '
            f'{moment["source_path"]} +{moment["start_s"]:.1f}s  clip {moment["clip_id"]}')


def cmd_list(args) -> int:
    from api import list_neurons

    result = list_neurons(args.root, date=args.date, moments=args.moments, include_silent=args.include_silent)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    scope = f"on {result['date']}" if result["date"] else "in the whole memory"
    print(f"{len(result['neurons'])} neurons of {result['version']} fire {scope} ({result['rows']} moments)")
    for n in result["neurons"]:
        print(f"neuron {n['id']:<5} {n['name'] or '-':<16} fires in {n['fires']} ({100 * n['share']:.1f}%)")
        for moment in n["top"]:
            print(_moment_line(moment))
    return 0


def cmd_show(args) -> int:
    from api import show_neuron

    n = show_neuron(args.root, args.neuron, moments=args.moments)
    if args.json:
        print(json.dumps(n, indent=2))
        return 0
    print(f"neuron {n['id']}" + (f" \"{n['name']}\"" if n["name"] else "") + f": born in {n['born_version']}, "
          f"last seen in {n['last_version']}")
    for h in n["history"]:
        cosine = "born" if h["match_cosine"] is None else f"matched, cosine {h['match_cosine']:.3f}"
        print(f"  {h['version']}: latent {h['latent']} ({cosine})")
    if n["version"] is None:
        print("no memory traces are stored")
        return 0
    if n["latent"] is None:
        print(f"not in {n['version']}, the version queries search")
        return 0
    print(f"in {n['version']}: fires in {n['fires']} of {n['rows']} moments")
    for moment in n["top"]:
        print(_moment_line(moment))
    return 0


def cmd_name(args) -> int:
    from api import name_neuron

    result = name_neuron(args.root, args.neuron, args.name)
    print(f"neuron {result['id']} is now \"{result['name']}\"")
    return 0


def cmd_unname(args) -> int:
    from api import name_neuron

    result = name_neuron(args.root, args.neuron, None)
    print(f"neuron {result['id']} has no name")
    return 0
