"""The night as an ordered list of stages, and the one registry of what each one writes.

A stage is a function ``run(night) -> dict`` that is safe to run twice: it writes to
temporary names and renames when complete. What it returns is JSON: its ``metrics`` go to
``summary.json["metrics"][name]``, everything else to ``summary.json[name]``. Adding a stage
means adding one module and one line in :data:`STAGES`; only stages that really exist are
listed here. A stage that needs another's model or space asks this registry
(:func:`stage`, :func:`writer_of`), never the other stage's module.
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
        model: the model it trains: its checkpoints live in ``checkpoints/{model}/`` and the
            vectors it writes are versioned ``{model}@{date}`` (``None``: it trains nothing
            nightly; openclip versions its vectors by the weights file instead).
        spaces: the memory spaces it writes.
    """

    name: str
    run: str
    config_sections: tuple[str, ...]
    needs: tuple[str, ...] = ()
    description: str = ""
    model: str | None = None
    spaces: tuple[str, ...] = ()

    def function(self) -> Callable[[Night], dict]:
        return _resolve(self.run)


STAGES: list[Stage] = [
    Stage("ingest", "stages.ingest:run", ("ingest",), description="Ingest"),
    Stage("keep", "stages.keep:run", ("memory.keep",), needs=("ingest",),
          description="Keyframes and sounds kept for re-embedding"),
    # Its text space is versioned by the MiniLM weights (like openclip's); ``model`` names
    # the journal's own sparse autoencoder (``text_sae``, ``textsae@{date}``).
    Stage("journal", "stages.journal:run", ("journal", "models.heldout_fraction"),
          description="Journal (text memory and its traces)", model="textsae", spaces=("text", "text_sae")),
    Stage("vision", "stages.vision:run", ("models.jepa", "models.heldout_fraction"), needs=("ingest",),
          description="Vision (I-JEPA)", model="jepa", spaces=("vision_frame", "vision")),
    Stage("audio", "stages.audio:run", ("models.cpc", "models.heldout_fraction"), needs=("ingest",),
          description="Audio (CPC)", model="cpc", spaces=("audio",)),
    Stage("align", "stages.align:run", ("models.align", "models.heldout_fraction"), needs=("vision", "audio"),
          description="Audio-visual alignment", model="align", spaces=("shared",)),
    Stage("sae", "stages.sae:run", ("models.sae", "models.heldout_fraction"), needs=("align",),
          description="Memory traces (sparse autoencoder)", model="sae", spaces=("sae",)),
    Stage("reconstruct", "stages.reconstruct:run", ("models.reconstruct", "models.heldout_fraction"),
          needs=("vision",), description="Completing fragments (MLP and Hopfield reconstructors)",
          model="reconstruct"),
    Stage("inpaint", "stages.inpaint:run", ("models.inpaint", "models.heldout_fraction"), needs=("vision",),
          description="Feature-space completion (inpainted patch tokens) and compressed memories",
          model="inpaint"),
    Stage("openclip", "stages.openclip:run", ("models.openclip",), needs=("ingest",),
          description="Free-text search (OpenCLIP weights on disk)", spaces=("openclip_frame", "openclip")),
    Stage("dream", "stages.dream:run", ("dream",), needs=("vision", "reconstruct"), description="Dreams",
          model="dream"),
    Stage("reembed", "stages.reembed:run", ("memory.reembed",), needs=("vision", "audio", "align", "sae"),
          description="Earlier days into tonight's versions"),
    Stage("probes", "stages.probes:run", ("memory.search",), needs=("vision", "audio", "reembed"),
          description="Old memories: recall of the probe set night by night"),
    Stage("episodes", "stages.episodes:run", ("episodes",), needs=("vision", "audio", "reembed"),
          description="Episodes and highlights of the day"),
    # Last: footage older than memory.retention goes; embeddings stay.
    Stage("retention", "stages.retention:run", ("memory",), description="Retention"),
]


def stage_names(stages: list[Stage] | None = None) -> list[str]:
    return [s.name for s in (STAGES if stages is None else stages)]


def stage(name: str) -> Stage:
    """The registered stage called ``name``.

    Raises:
        KeyError: no such stage.
    """
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(f"no stage {name!r}; stages: {', '.join(stage_names())}")


def writer_of(space: str) -> Stage:
    """The stage that writes the memory space ``space``.

    Raises:
        KeyError: no stage writes it.
    """
    for s in STAGES:
        if space in s.spaces:
            return s
    raise KeyError(f"no stage writes the space {space!r}")


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
