"""Every file of a night lives under one root; this is the only place that spells the layout."""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

# The memory is private: folders 0700, files 0600 (see the memory issue).
PRIVATE_DIR_MODE = 0o700


def make_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) readable by the owner only; return it."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    return path


@dataclass(frozen=True)
class Paths:
    """The layout under ``root``: ``data/``, ``memory/``, ``checkpoints/``, ``reports/``."""

    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike) -> "Paths":
        return cls(Path(root).expanduser().resolve())

    @property
    def vault(self):
        """How files under the root are stored and read: sealed with the memory's key when
        it has one (:func:`core.vault.vault`; unlocked on first use)."""
        from core.vault import vault  # core.vault needs core.keys, which needs this module

        return vault(self.root)

    # -- the day's inputs and derived media ---------------------------------------------
    def raw(self, date: dt.date) -> Path:
        return self.root / "data" / "raw" / date.isoformat()

    def clips(self, date: dt.date) -> Path:
        return self.root / "data" / "clips" / date.isoformat()

    def frames(self, date: dt.date) -> Path:
        return self.root / "data" / "frames" / date.isoformat()

    def audio(self, date: dt.date) -> Path:
        return self.root / "data" / "audio" / date.isoformat()

    def audio_segments(self, date: dt.date) -> Path:
        return self.audio(date) / "segments"

    # -- memory, models, reports ----------------------------------------------------------
    @property
    def memory(self) -> Path:
        return self.root / "memory"

    @property
    def database(self) -> Path:
        return self.memory / "episodic.sqlite"

    @property
    def embeddings(self) -> Path:
        return self.memory / "embeddings"

    def keep(self, date: dt.date | str) -> Path:
        """``memory/keep/{date}/``: each clip's keyframe and sound, kept after retention."""
        return self.memory / "keep" / (date if isinstance(date, str) else date.isoformat())

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def report(self, date: dt.date) -> Path:
        return self.root / "reports" / date.isoformat()

    @property
    def dreams_on_demand(self) -> Path:
        """``reports/dreams/``: what ``sleep.py dream`` and ``sleep.py blend`` draw."""
        return self.root / "reports" / "dreams"

    @property
    def lock(self) -> Path:
        return self.root / ".sleep.lock"

    @property
    def shard_lock(self) -> Path:
        """Held while a shard file is written and its row committed outside a night (``journal
        add``), and by ``doctor`` while it asks whether a file it found unnamed is new."""
        return self.root / ".sleep-shards.lock"

    @property
    def daemon_lock(self) -> Path:
        """Held by ``sleep.py daemon`` for its whole life: one scheduler per root."""
        return self.root / ".sleep-daemon.lock"

    def raw_dates(self) -> list[dt.date]:
        """Dates that have a ``data/raw/YYYY-MM-DD`` folder, oldest first."""
        return self.dates_under("raw")

    def dates_under(self, kind: str) -> list[dt.date]:
        """Dates that have a ``data/{kind}/YYYY-MM-DD`` folder, oldest first."""
        found = []
        base = self.root / "data" / kind
        if base.is_dir():
            for child in base.iterdir():
                try:
                    found.append(dt.date.fromisoformat(child.name))
                except ValueError:
                    continue
        return sorted(found)
