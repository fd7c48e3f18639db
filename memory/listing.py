"""Which files exist, read a folder at a time: the doctor's view of the disk (:mod:`memory.doctor`).

A year of memory names tens of millions of files (frames, audio segments, clip files,
keepsakes). One ``stat`` per file is most of an hour of system calls; one ``os.scandir``
per folder and a set difference per folder answer the same question in a fraction of it.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path


class Listings:
    """Which of the files a folder should hold are not there, from one listing per folder.

    The answer is ``(root / rel).exists()``'s: only a path that equals ``{folder}/{name}`` of
    a listed entry that is no symbolic link counts as there without asking; every other
    path (a link, an unusual spelling, a folder that cannot be read, a file really gone) is
    asked of the file system directly. The listings of the last ``keep`` folders are kept:
    rows read in id order come a folder at a time.
    """

    def __init__(self, root: Path, keep: int = 8):
        self._root = Path(root)
        self._keep = keep
        self._present: OrderedDict[str, frozenset[str]] = OrderedDict()

    def missing(self, rels: Iterable[str]) -> set[str]:
        """Those of ``rels`` (paths relative to the root) that do not exist.

        Each folder is looked at once: its listing takes away every path it holds, so rows
        of a few folders cost a few set differences, not a ``stat`` each.
        """
        left, unseen = set(rels), set()
        looked: set[str] = set()
        while left:
            rel = left.pop()
            folder = rel.rpartition("/")[0]
            if folder in looked:
                unseen.add(rel)
                continue
            looked.add(folder)
            present = self.present(folder)
            if rel not in present:
                unseen.add(rel)
            if len(present) < len(left):
                left.difference_update(present)  # goes through ``present``
            else:
                left = left - present  # goes through ``left``
        return {rel for rel in unseen if not (self._root / rel).exists()}

    def present(self, folder: str) -> frozenset[str]:
        """``{folder}/{name}`` of every entry of ``folder`` (relative to the root) but links."""
        if folder in self._present:
            self._present.move_to_end(folder)
            return self._present[folder]
        prefix = f"{folder}/" if folder else ""
        found: frozenset[str] = frozenset()
        if not folder.startswith("/"):  # an absolute path is not under the root: ask per file
            try:
                with os.scandir(self._root / folder) as entries:
                    found = frozenset(prefix + e.name for e in entries if not e.is_symlink())
            except OSError:
                pass  # gone or unreadable: each of its files is asked directly
        self._present[folder] = found
        if len(self._present) > self._keep:
            self._present.popitem(last=False)
        return found


def unknown_files(root: Path, folder: str, unknown: Callable[[str, list[str]], set[str]]) -> Iterator[str]:
    """Files under ``root / folder`` that ``unknown`` picks, relative to the root, in the order of
    ``sorted(Path.rglob("*"))``; like ``rglob``, links to folders are not followed and a link
    to a file counts as a file.

    Args:
        root: the root the paths are relative to.
        folder: where to start, relative to ``root``.
        unknown: given a folder (relative to the root) and the names of the files in it,
            returns the names to yield.
    """
    try:
        with os.scandir(root / folder) as found:
            entries = list(found)
    except OSError:
        return
    files = [e.name for e in entries if e.is_file()]
    folders = [] if len(files) == len(entries) else [
        e.name for e in entries if not e.is_file() and e.is_dir() and not e.is_symlink()]
    picked = unknown(folder, files)
    for name in sorted([*picked, *folders]):
        if name in picked:
            yield f"{folder}/{name}"
        else:
            yield from unknown_files(root, f"{folder}/{name}", unknown)
