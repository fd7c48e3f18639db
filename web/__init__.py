"""``sleep.py serve``: a local web page to search and browse the memory.

:func:`web.app.make_app` builds the Starlette application: one page with a small script of
its own (no JavaScript framework, nothing loaded from the network), a JSON search endpoint
that calls the same typed API as the command line (:func:`api.query`,
:func:`api.journal_query`), and the day's media under ``data/`` and ``memory/keep/``. Every
request needs the token printed at start (:mod:`web.auth`). :mod:`web.server` binds and runs
it with uvicorn.
"""
from web.app import make_app

__all__ = ["make_app"]
