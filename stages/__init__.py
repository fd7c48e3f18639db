"""The night as an ordered list of stages.

A stage is a function ``run(night) -> dict`` that is safe to run twice: it writes to
temporary names and renames when complete. What it returns is JSON: its ``metrics`` go to
``summary.json["metrics"][name]``, everything else to ``summary.json[name]``. Adding a stage
means adding one module and one line in :data:`STAGES`; only stages that really exist are
listed here.
"""
from __future__ import annotations

import datetime as dt
import importlib
import logging
from dataclasses import dataclass, field
from typing import Callable

from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from core.config import SleepConfig
from core.paths import Paths


@dataclass
class Night:
    """Everything a stage may use: the date, its sub-configs, the layout, the database."""

    date: dt.date
    cfg: SleepConfig
    paths: Paths
    engine: Engine
    Session: sessionmaker
    device: str
    log: logging.Logger
    # Stages may read what earlier stages of this night returned (by stage name).
    results: dict[str, dict] = field(default_factory=dict)

    @property
    def day(self) -> str:
        return self.date.isoformat()


def _resolve(target: str) -> Callable:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Stage:
    """One step of the night.

    Args:
        name: ledger and summary key.
        run: ``"module:function"`` taking a :class:`Night`, imported only when needed so
            that ``sleep.py status`` does not pay for importing torch.
        config_sections: the sub-configs whose change makes the stage run again.
        needs: stages that must be done first (their config also feeds this stage's hash).
        description: one line for ``--help`` and the report.
    """

    name: str
    run: str
    config_sections: tuple[str, ...]
    needs: tuple[str, ...] = ()
    description: str = ""

    def function(self) -> Callable[[Night], dict]:
        return _resolve(self.run)


STAGES: list[Stage] = [
    Stage("ingest", "stages.ingest:run", ("ingest",), description="Ingest"),
    Stage("vision", "stages.vision:run", ("models.jepa", "models.heldout_fraction"), needs=("ingest",),
          description="Vision (I-JEPA)"),
    Stage("audio", "stages.audio:run", ("models.cpc", "models.heldout_fraction"), needs=("ingest",),
          description="Audio (CPC)"),
    Stage("align", "stages.align:run", ("models.align", "models.heldout_fraction"), needs=("vision", "audio"),
          description="Audio-visual alignment"),
    Stage("sae", "stages.sae:run", ("models.sae", "models.heldout_fraction"), needs=("align",),
          description="Memory traces (sparse autoencoder)"),
    Stage("reconstruct", "stages.reconstruct:run", ("models.reconstruct", "models.heldout_fraction"),
          needs=("vision",), description="Completing fragments (MLP and Hopfield reconstructors)"),
    Stage("openclip", "stages.openclip:run", ("models.openclip",), needs=("ingest",),
          description="Free-text search (OpenCLIP weights on disk)"),
    Stage("dream", "stages.dream:run", ("dream",), needs=("vision", "reconstruct"), description="Dreams"),
    # Last: footage older than memory.retention goes; embeddings stay.
    Stage("retention", "stages.retention:run", ("memory",), description="Retention"),
]


def stage_names(stages: list[Stage] | None = None) -> list[str]:
    return [s.name for s in (STAGES if stages is None else stages)]


def config_hash(stage: Stage, cfg: SleepConfig, stages: list[Stage]) -> str:
    """Hash of the stage's own config sections and those of every stage it needs."""
    by_name = {s.name: s for s in stages}
    sections: list[str] = []
    todo = [stage]
    while todo:
        current = todo.pop()
        sections.extend(current.config_sections)
        todo.extend(by_name[n] for n in current.needs if n in by_name)
    return cfg.section_hash(*sorted(set(sections)))
