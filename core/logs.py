"""Logging set-up: a short console format, and each night's full log in its report folder."""
from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Iterator

CONSOLE_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(process)d]: %(message)s"


def configure_console(verbose: bool = False) -> None:
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    if not any(getattr(h, "_sleep_console", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler._sleep_console = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter(CONSOLE_FORMAT, "%H:%M:%S"))
        root.addHandler(handler)
    for h in root.handlers:
        if getattr(h, "_sleep_console", False):
            h.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("PIL", "matplotlib", "urllib3", "apscheduler.scheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def night_log(path: Path) -> Iterator[None]:
    """Append everything logged while the block runs to ``path`` (``reports/{date}/sleep.log``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
