"""SIGTERM and SIGINT ask a night to stop between stages instead of killing it mid-stage.

systemd sends SIGTERM on ``systemctl stop`` and at shutdown; a person presses Ctrl-C.
Either way the stage that is running finishes and commits its ledger row, the night ends
there, and the next start resumes through the ledger. Ctrl-C a second time gives up at
once: the interrupted stage reads ``interrupted`` in ``sleep.py status`` and reruns.
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import Callable

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class GracefulStop:
    """``with GracefulStop() as stop: run_night(..., should_stop=stop.requested)``.

    Args:
        on_request: called once, in the main thread, when the first signal arrives
            (the daemon uses it to shut its scheduler down).

    Handlers are installed only when entered from the main thread (Python delivers
    signals there alone) and the previous ones are restored on exit.
    """

    def __init__(self, on_request: Callable[[], None] | None = None):
        self._on_request = on_request
        self._event = threading.Event()
        self._previous: dict[int, object] = {}

    def requested(self) -> bool:
        """``True`` once a stop was asked for."""
        return self._event.is_set()

    def _handle(self, signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if self._event.is_set():
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            log.warning("%s again: still finishing the current stage", name)
            return
        self._event.set()
        log.warning("%s: finishing the current stage, then stopping (Ctrl-C again exits at once)",
                    name)
        if self._on_request is not None:
            self._on_request()

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
