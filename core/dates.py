"""Dates are the only user input that becomes part of a path, so they are parsed strictly."""
from __future__ import annotations

import datetime as dt
import re

from core.errors import UsageError

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_date(text: str) -> dt.date:
    """Parse ``YYYY-MM-DD`` into a real calendar date.

    Args:
        text: what the user typed.
    Returns:
        the date.
    Raises:
        UsageError: for anything that is not exactly a valid calendar date
            (``2026-02-30``, ``../../etc``, ``2026-1-5``).
    """
    if not _ISO_DATE.match(text or ""):
        raise UsageError(f"invalid date {text!r}: expected YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise UsageError(f"invalid date {text!r}: {exc}") from None
