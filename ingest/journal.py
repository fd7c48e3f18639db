"""A day's journal: ``data/raw/{date}/journal.md`` (or ``journal.txt``), one entry per line.

A line is an entry, optionally led by the time it happened (``08:15 coffee with Ana``).
Markdown niceties are understood: blank lines and headings (``# Monday``) are not entries,
and a leading bullet (``- `` or ``* ``) is dropped. What cannot be read is noted with the
file and line, and the rest of the journal is kept:

- a leading ``HH:MM`` that is no time of day (``25:99``): kept, as text without a time (the
  whole line, so nothing the person wrote is lost);
- a line that is not UTF-8, or holds control characters (binary bytes): skipped;
- a line longer than ``journal.max_line_chars`` characters: skipped (pasted data, not an
  entry; a cut-off half would be a misleading memory);
- a time with no text after it: skipped.

Pure functions only: :func:`parse_journal` reads a file, :func:`parse_line` one line,
:func:`format_line` writes one (``sleep.py journal add``), so that what is appended reads
back as the same entry. A journal ``journal add`` wrote into a sealed memory is sealed; the
file is read through the root's vault (:func:`core.vault.read_file`), which passes a
person's own plaintext journal through as it is.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

from core.config import parse_clock_time
from core.sealed import SealedFileError
from core.vault import read_file

JOURNAL_NAMES = ("journal.md", "journal.txt")
# A leading token shaped like a clock time ("8:15", "25:99"), then an optional separator.
_LEAD_TIME = re.compile(r"^(\d{1,2}:\d{2})(?:\s*[-–—:]\s*|\s+|$)")
_BULLET = re.compile(r"^[-*+]\s+")
# C0 controls other than tab, and DEL: a text line never holds them; binary data does.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class JournalLine:
    """One entry as written: its line number (1-based), its time if given, and its text."""

    line: int
    at: dt.time | None
    text: str

    @property
    def at_text(self) -> str | None:
        """The time as ``HH:MM``, or ``None``."""
        return self.at.strftime("%H:%M") if self.at else None


def journal_files(raw: Path) -> list[Path]:
    """The day's journal files in ``raw`` (``journal.md`` before ``journal.txt``), those that exist."""
    return [raw / name for name in JOURNAL_NAMES if (raw / name).is_file()]


def parse_line(text: str, number: int) -> tuple[JournalLine | None, str | None]:
    """One decoded line -> ``(entry or None, note or None)``; the note lacks the file's name.

    Args:
        text: the line without its line break.
        number: its 1-based line number, for the entry and the note.
    """
    text = text.strip()
    if not text or text.startswith("#"):
        return None, None
    text = _BULLET.sub("", text, count=1).strip()
    match = _LEAD_TIME.match(text)
    if not match:
        return (JournalLine(number, None, text), None) if text else (None, None)
    rest = text[match.end():].strip()
    try:
        hour, minute = parse_clock_time(match[1])
    except ValueError:
        return JournalLine(number, None, text), \
            f"line {number}: {match[1]!r} is not a time (HH:MM); kept as text without a time"
    if not rest:
        return None, f"line {number}: a time ({match[1]}) with no text; skipped"
    return JournalLine(number, dt.time(hour, minute), rest), None


def parse_journal(path: Path, max_line_chars: int) -> tuple[list[JournalLine], list[str]]:
    """Read a journal file into entries, with a note for every line that could not be taken as is.

    Args:
        path: ``journal.md`` or ``journal.txt``.
        max_line_chars: longer lines are skipped (see the module's docstring).
    Returns:
        ``(entries in file order, notes)``; each note starts ``"{file name} line {n}: "``
        (or the file's name alone when the file cannot be read at all).
    """
    try:
        data = read_file(path)
    except OSError as exc:
        return [], [f"{path.name}: cannot be read ({exc.strerror or exc}); no entries taken"]
    except SealedFileError as exc:
        return [], [f"{path.name}: cannot be read ({exc}); no entries taken"]
    entries: list[JournalLine] = []
    notes: list[str] = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        raw = raw.removesuffix(b"\r")
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            notes.append(f"{path.name} line {number}: not UTF-8 text, skipped")
            continue
        if len(text) > max_line_chars:
            notes.append(f"{path.name} line {number}: {len(text)} characters, longer than "
                         f"journal.max_line_chars ({max_line_chars}), skipped")
            continue
        if _CONTROL.search(text):
            notes.append(f"{path.name} line {number}: binary bytes (control characters), skipped")
            continue
        entry, note = parse_line(text, number)
        if note:
            notes.append(f"{path.name} {note}")
        if entry is not None:
            entries.append(entry)
    return entries, notes


def format_line(text: str, at: dt.time | None) -> str:
    """The journal line (no line break) that :func:`parse_line` reads back as ``text`` at ``at``.

    Whitespace runs (line breaks too) become one space. A text that would read as a heading
    or a bullet gets a bullet, which the parser drops again; a text that starts with a time
    of day and no ``at`` is read back with that time.

    Raises:
        ValueError: the text is empty.
    """
    text = " ".join(text.split())
    if not text:
        raise ValueError("the entry is empty")
    if at is not None:
        return f"{at.strftime('%H:%M')} {text}"
    if text.startswith("#") or _BULLET.match(text):
        return f"- {text}"
    return text
