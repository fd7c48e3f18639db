"""``sleep.py serve``: the local search page; a thin shell over :func:`web.make_app`."""
from __future__ import annotations

import sys

SERVE_HELP = "a local web page to search and browse the memory (127.0.0.1, with a token)"


def add_serve_command(sub, add_common) -> None:
    """Register ``serve`` on the ``sleep.py`` subparsers.

    Args:
        sub: the ``add_subparsers`` object of ``cli.main.build_parser``.
        add_common: ``cli.main._add_common`` (``--root``, ``--config``, ``--set``, ``-v``).
    """
    serve = sub.add_parser(
        "serve", help=SERVE_HELP,
        description="Serve a page to search the memory by an uploaded image, sound or fragment, by "
                    "journal words or by memory-trace neurons, and to browse its days and episodes. "
                    "It listens on 127.0.0.1 only, and every request needs the token printed at start "
                    "(a new one each time), so other users of this machine cannot read the memory. "
                    "Nothing in the page loads from the network. Ctrl-C stops it.")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1; anything else exposes the memory "
                            "beyond this machine, protected only by the token over plain HTTP)")
    serve.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765; 0: any free one)")
    serve.add_argument("--open", action="store_true", help="open the page in the default browser")
    add_common(serve)
    serve.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from core.config import load_config
    from web import make_app
    from web.server import bind, is_loopback, make_server, url_of

    app = make_app(args.root, load_config(args.config, args.overrides))
    sock = bind(args.host, args.port)
    if not is_loopback(args.host):
        print(f"sleep: WARNING: listening on {args.host}, not only on this machine: anyone who can reach "
              f"it and learns the token reads your memory, over unencrypted HTTP", file=sys.stderr)
    url = f"{url_of(sock)}/?token={app.state.token}"
    print(f"serving the memory under {app.state.paths.root}\nopen {url}\n(Ctrl-C stops)", flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(url)
    try:
        make_server(app).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn has shut down cleanly and re-raises the signal
        pass
    finally:
        sock.close()
    print("stopped", flush=True)
    return 0
