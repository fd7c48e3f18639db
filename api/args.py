"""Turn what a caller passes (a path or :class:`Paths`, a date or its text, a config file or
object) into what the memory's functions take, with a :class:`UsageError` for a bad value."""
from __future__ import annotations

import datetime as dt
import os

from core.config import SleepConfig, load_config
from core.dates import parse_date
from core.errors import UsageError
from core.paths import Paths

Root = str | os.PathLike | Paths
Day = dt.date | str


def paths_of(root: Root) -> Paths:
    """The layout under ``root`` (a folder, or a :class:`Paths` already made)."""
    return root if isinstance(root, Paths) else Paths.at(root)


def memory_of(root: Root) -> Paths:
    """The layout under ``root``, which must hold a memory.

    Raises:
        UsageError: no database yet (no night has run there).
    """
    paths = paths_of(root)
    if not paths.database.exists():
        raise UsageError(f"{paths.database}: no memory yet (run a night first)")
    return paths


def date_of(value: Day, name: str) -> dt.date:
    """A ``datetime.date`` or ``"YYYY-MM-DD"`` as a date; ``name`` is quoted in the error."""
    if isinstance(value, dt.datetime):
        raise UsageError(f"{name} {value}: expected a date, not a date and time")
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        return parse_date(value)
    raise UsageError(f"{name} {value!r}: expected a datetime.date or YYYY-MM-DD")


def config_of(config: SleepConfig | str | os.PathLike | None,
              overrides: list[str] | None) -> SleepConfig:
    """The validated config: a :class:`SleepConfig` as given, else the file (default config
    when ``None``) with ``overrides`` (``key.path=value``) applied."""
    if isinstance(config, SleepConfig):
        if overrides:
            raise UsageError("overrides apply to a config file; change the SleepConfig itself instead")
        return config
    return load_config(config, overrides)
