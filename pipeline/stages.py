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

from .config import SleepConfig
from .paths import Paths


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
        report: optional ``"module:function"`` rendering the stage's report section.
        description: one line for ``--help`` and the report.
    """

    name: str
    run: str
    config_sections: tuple[str, ...]
    needs: tuple[str, ...] = ()
    report: str | None = None
    description: str = ""

    def function(self) -> Callable[[Night], dict]:
        return _resolve(self.run)

    def report_function(self) -> Callable | None:
        return _resolve(self.report) if self.report else None


STAGES: list[Stage] = [
    Stage("ingest", "ingest.stage:run", ("ingest",), report="ingest.report:render", description="Ingest"),
    Stage("vision", "models.vision_stage:run", ("models.jepa",), needs=("ingest",),
          report="models.vision_report:render", description="Vision (I-JEPA)"),
    Stage("audio", "models.audio_stage:run", ("models.cpc", "models.heldout_fraction"), needs=("ingest",),
          report="models.audio_report:render_cpc", description="Audio (CPC)"),
    Stage("align", "models.align_stage:run", ("models.align", "models.heldout_fraction"), needs=("vision", "audio"),
          report="models.audio_report:render_align", description="Audio-visual alignment"),
    Stage("sae", "models.sae_stage:run", ("models.sae", "models.heldout_fraction"), needs=("align",),
          report="models.sae_report:render", description="Memory traces (sparse autoencoder)"),
    Stage("reconstruct", "models.reconstruct_stage:run", ("models.reconstruct", "models.heldout_fraction"),
          needs=("vision",), report="models.reconstruct_report:render",
          description="Completing fragments (MLP and Hopfield reconstructors)"),
    Stage("clip", "models.clip_stage:run", ("models.clip",), needs=("ingest",), report="models.clip_stage:render",
          description="Free-text search (OpenCLIP weights on disk)"),
    Stage("dream", "dream.stage:run", ("dream",), needs=("vision", "reconstruct"), report="dream.report:render",
          description="Dreams"),
    # Last: footage older than memory.retention goes; embeddings stay.
    Stage("retention", "memory.retention:run", ("memory",), description="Retention"),
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
