"""Logging set-up: a short console format, and each night's full log in its report folder."""
from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import sys
import threading
import time
from queue import Empty
from collections.abc import Iterator
from pathlib import Path

from core.sealed import SealedFileError
from core.vault import Vault, vault_of

CONSOLE_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(process)d]: %(message)s"
# A sealed night log is written out again at most this often while the night runs, so a
# night killed outright (power cut, the OOM killer) keeps its log up to the last minute.
SEALED_LOG_EVERY_S = 60.0
# How long a night waits, after its worker processes ended, for their last log records.
WORKER_LOG_DRAIN_S = 5.0


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
    _quiet_noisy_loggers()


def _quiet_noisy_loggers() -> None:
    for noisy in ("PIL", "matplotlib", "urllib3", "apscheduler.scheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def worker_records(context) -> Iterator:
    """A queue that worker processes log into (:func:`log_to_queue` in their initializer), and
    a thread here that logs each record that arrives as if this process had logged it.

    Why: a spawned worker starts with no handlers, so its lines (FFmpeg's stderr for a file
    it could not read) reached neither the console nor the night's log; and a sealed log is
    written by this process only (:class:`_SealedLogHandler`). Relogged here, they reach both,
    with the worker's pid in the log line.

    Not ``logging.handlers.QueueListener``: its ``stop`` joins its thread without a limit,
    and a worker killed in the middle of a long record (the OOM killer) leaves half a message
    in the pipe that the thread then waits on forever, which would hang the night. Here the
    thread is a daemon and is given :data:`WORKER_LOG_DRAIN_S` to finish.

    Args:
        context: the multiprocessing context the pool starts its workers with.
    Yields:
        the queue, to pass to the workers' initializer.
    """
    queue = context.Queue()
    stop = threading.Event()

    def relog() -> None:
        while True:
            try:
                record = queue.get(timeout=0.2)
            except Empty:
                if stop.is_set():
                    return
                continue
            except (EOFError, OSError):
                return
            except Exception:  # noqa: BLE001 (a record that does not unpickle: skipped)
                continue
            try:
                logging.getLogger(record.name).handle(record)
            except Exception:  # noqa: BLE001 (logging's rule: never fail the caller)
                continue

    thread = threading.Thread(target=relog, name="worker-logs", daemon=True)
    thread.start()
    try:
        yield queue
    finally:
        stop.set()
        thread.join(timeout=WORKER_LOG_DRAIN_S)  # the workers have ended: what they sent is queued
        queue.cancel_join_thread()
        queue.close()


def log_to_queue(queue) -> None:
    """In a worker process: send every record to the parent (:func:`worker_records`), and only there."""
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(queue)]
    root.setLevel(logging.DEBUG)
    _quiet_noisy_loggers()


@contextlib.contextmanager
def night_log(path: Path) -> Iterator[None]:
    """Append everything logged while the block runs to ``path`` (``reports/{date}/sleep.log``).

    In a sealed memory (``memory.encryption: on``) the log is sealed too: its lines name the
    recordings and say what was in them. A sealed file cannot be appended to, so the lines
    are kept in memory and the log is written whole, sealed (what it held before and the new
    lines), when the block ends, an exception included, and every :data:`SEALED_LOG_EVERY_S`
    while it runs. A plain memory's log is appended to as it is written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    vault = vault_of(path)
    handler = _SealedLogHandler(vault, path) if vault.sealing else logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


class _SealedLogHandler(logging.Handler):
    """Keeps a night's log lines and writes the log sealed: on :meth:`close`, and at most every
    :data:`SEALED_LOG_EVERY_S` as records arrive.

    What the log held before (an earlier run of the same night) is read once, through the
    vault (a plain log from before encryption was turned on is read as it is, and sealed
    now), and written back ahead of tonight's lines, atomically each time. Records a forked
    child process logs (a worker) reach the console but not this log: the child's copy of
    the handler must not write the file over the parent's.
    """

    def __init__(self, vault: Vault, path: Path) -> None:
        super().__init__()
        self.vault, self.path = vault, path
        self.pid = os.getpid()
        self.before = self._earlier()
        self.lines: list[str] = []
        self.written = time.monotonic()
        self.unwritten = False

    def _earlier(self) -> bytes:
        try:
            return self.vault.read_bytes(self.path)
        except FileNotFoundError:
            return b""
        except SealedFileError as exc:
            # Writing tonight's log over it would lose it: set it aside (still sealed, under
            # its own name, which it opens with as name_as) and start a new log.
            aside = self.path.with_name(f"{self.path.name}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}")
            self.path.rename(aside)
            return (f"[the log before this point did not open ({exc}); it is kept as {aside.name}, "
                    f"sealed as {self.path.name}]\n").encode()

    def emit(self, record: logging.LogRecord) -> None:
        if os.getpid() != self.pid:
            return
        try:
            self.lines.append(self.format(record) + "\n")
            self.unwritten = True
            if time.monotonic() - self.written >= SEALED_LOG_EVERY_S:
                self._write()
        except Exception:  # noqa: BLE001 (logging's rule: a handler that fails must not fail the caller)
            self.handleError(record)

    def _write(self) -> None:
        # Under the handler's lock (emit, close): one writer at a time.
        self.written = time.monotonic()
        with self.vault.writer(self.path) as fh:
            fh.write(self.before)
            fh.write("".join(self.lines).encode("utf-8"))
        self.unwritten = False

    def flush(self) -> None:
        pass  # written in whole files, not line by line

    def close(self) -> None:
        self.acquire()
        try:
            if os.getpid() == self.pid and (self.unwritten or not self.path.exists()):
                self._write()
        finally:
            self.release()
            super().close()
