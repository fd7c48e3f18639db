"""Progress bars on a terminal only.

Under cron or systemd a night's stderr goes to mail or the journal, where a bar's thousands of
carriage-return updates bury the log lines between them (the night's own log file, in its
report folder, never holds bars). tqdm's ``disable=None`` shows a bar only when its stream is
a terminal; :func:`bar_off` gives that, or ``True`` where the caller wants no bar at all.
"""
from __future__ import annotations


def bar_off(progress: bool = True, *also_off: bool) -> bool | None:
    """tqdm's ``disable`` for a bar: ``True`` (no bar) when ``progress`` is false or any of
    ``also_off`` holds (another process's bar, too little work to show), else ``None`` (a bar
    when stderr is a terminal)."""
    return True if not progress or any(also_off) else None
