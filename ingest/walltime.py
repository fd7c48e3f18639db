"""When a recording started, in local wall-clock time, and where that time came from.

In order: the container's ``creation_time`` tag, a time in the file name, the file's
modification time. Cameras and phones put the time in the name in a few common shapes:
``VID_20191220_170832``, ``PXL_20231220_170832123``, ``20191220-170832``, ``1915_call.mp4``
(HHMM), ``17-08-32.mp4`` (HH-MM-SS). Names with only a time of day take the night's date.
"""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from ingest.probe import parse_creation_time

_DATE_TIME = re.compile(r"(?<!\d)(\d{4})(\d{2})(\d{2})[_\-T ]?(\d{2})(\d{2})(\d{2})")
_HH_MM_SS = re.compile(r"(?<!\d)(\d{2})[-.](\d{2})[-.](\d{2})(?![\d])")
_HHMM_PREFIX = re.compile(r"^(\d{2})(\d{2})(?=[_\- ])")


def _valid_time(h: int, m: int, s: int) -> bool:
    return 0 <= h < 24 and 0 <= m < 60 and 0 <= s < 60


def time_from_name(name: str, day: dt.date) -> dt.datetime | None:
    """The recording time written in a file name, or None.

    Args:
        name: the file name (with or without folders).
        day: the night's date, for names that hold only a time of day.
    """
    stem = Path(name).stem
    for match in _DATE_TIME.finditer(stem):
        y, mo, d, h, mi, s = (int(g) for g in match.groups())
        if 1990 <= y <= 2200 and _valid_time(h, mi, s):
            try:
                return dt.datetime(y, mo, d, h, mi, s)
            except ValueError:
                continue
    for match in _HH_MM_SS.finditer(stem):
        h, mi, s = (int(g) for g in match.groups())
        if _valid_time(h, mi, s):
            return dt.datetime.combine(day, dt.time(h, mi, s))
    match = _HHMM_PREFIX.match(stem)
    if match:
        h, mi = int(match.group(1)), int(match.group(2))
        if _valid_time(h, mi, 0):
            return dt.datetime.combine(day, dt.time(h, mi))
    return None


def wall_start(path: Path, creation_time: str | None, day: dt.date) -> tuple[dt.datetime, str]:
    """When ``path`` started recording and how we know.

    Args:
        path: the raw file.
        creation_time: the container's ``creation_time`` tag, if any.
        day: the night's date.
    Returns:
        ``(local naive datetime, "creation_time" | "filename" | "mtime")``.
    """
    stamp = parse_creation_time(creation_time)
    if stamp is not None:
        return stamp, "creation_time"
    stamp = time_from_name(path.name, day)
    if stamp is not None:
        return stamp, "filename"
    return dt.datetime.fromtimestamp(path.stat().st_mtime), "mtime"
