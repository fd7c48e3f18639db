"""Assemble ``summary.json`` from the ledger and render ``index.html`` from its sections.

Section API: a stage's section is ``report/sections/{stage}.py``, whose ``render`` takes
``(summary: dict, ctx: ReportContext)`` and returns an HTML fragment (or ``None`` to
leave its section out). The summary and stage-timings sections are this package's own.
"""
from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jinja2

from core.atomic import atomic_write_text
from core.config import SleepConfig
from core.paths import Paths
from memory import ledger
from memory.db import make_sessionmaker, open_database
from report import html as h
from stages import Stage

log = logging.getLogger(__name__)
TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class ReportContext:
    """What a section renderer may use besides the summary."""

    date: dt.date
    cfg: SleepConfig
    paths: Paths


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    html: str


def build_summary(date: dt.date, paths: Paths, stages: list[Stage]) -> dict:
    """``{"date", "stages": {name: {status, seconds, error}}, <stage>: {...}, "metrics": {...}}``."""
    engine = open_database(paths.database)
    try:
        with make_sessionmaker(engine)() as session:
            states = {s.stage: s for s in ledger.night(session, date.isoformat())}
    finally:
        engine.dispose()
    summary: dict = {"date": date.isoformat(), "stages": {}, "metrics": {}}
    for stage in stages:
        state = states.get(stage.name)
        if state is None:
            summary["stages"][stage.name] = {"status": "not run", "seconds": None, "error": None}
            continue
        entry = state.as_dict()
        if entry["status"] == "running":
            # The caller holds the night's lock, so nothing is really running: it was killed.
            entry["status"] = "interrupted"
        summary["stages"][stage.name] = entry
        result = dict(state.result or {})
        metrics = result.pop("metrics", None)
        if metrics is not None:
            summary["metrics"][stage.name] = metrics
        if result:
            summary[stage.name] = result
    return summary


def _summary_section(summary: dict, ctx: ReportContext) -> str:
    stages = summary["stages"]
    failed = [n for n, s in stages.items() if s["status"] in ("failed", "interrupted")]
    total = sum(s["seconds"] or 0 for s in stages.values())
    if not stages:
        verdict = '<p class="muted">No stages are registered yet.</p>'
    elif failed:
        verdict = (f'<p class="status failed">{len(failed)} stage(s) did not finish: '
                   f'{h.esc(", ".join(failed))}. See <code>sleep.log</code> beside this page.</p>')
    elif all(s["status"] == "done" for s in stages.values()):
        verdict = '<p class="status ok">Every stage completed.</p>'
    else:
        verdict = '<p class="status">Some stages have not run yet.</p>'
    ingest = summary.get("ingest") or {}
    facts = []
    if ingest:
        facts.append(("files processed", len(ingest.get("processed", []))))
        facts.append(("files skipped", len(ingest.get("failed", []))))
        for key in ("clips", "frames", "audio_segments"):
            if key in ingest:
                facts.append((key.replace("_", " "), ingest[key]))
        if "footage_seconds" in ingest:
            facts.append(("footage", h.seconds(ingest["footage_seconds"])))
    facts.append(("time spent on stages", h.seconds(total)))
    return verdict + h.table([], facts)


def _timings_section(summary: dict, ctx: ReportContext) -> str:
    rows = []
    for name, s in summary["stages"].items():
        rows.append((name, s["status"], h.seconds(s["seconds"]), s.get("attempts") or "-", s["error"] or ""))
    if not rows:
        return '<p class="muted">No stages.</p>'
    # A model that could not continue last night's weights (its config changed the network's
    # shape) started afresh: say so here, whichever stage it was (stages.common.resume_state).
    restarts = [(name, (summary.get(name) or {}).get("restart_reason")) for name in summary["stages"]]
    notes = "".join(f'<p class="warning">{h.esc(name)} started afresh: {h.esc(reason)}</p>'
                    for name, reason in restarts if reason)
    return h.table(["stage", "status", "time", "attempts", "error"], rows) + notes


def section_renderer(stage_name: str) -> Callable[[dict, ReportContext], str | None] | None:
    """``report.sections.{stage_name}.render``, or ``None`` for a stage without a section."""
    try:
        module = importlib.import_module(f"report.sections.{stage_name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"report.sections.{stage_name}":
            return None
        raise
    return module.render


def render_sections(summary: dict, ctx: ReportContext, stages: list[Stage]) -> list[Section]:
    sections = [Section("summary", "Summary", _summary_section(summary, ctx)),
                Section("timings", "Stage timings", _timings_section(summary, ctx))]
    for stage in stages:
        render = section_renderer(stage.name)
        if render is None:
            continue
        try:
            fragment = render(summary, ctx)
        except Exception:  # a broken section must not cost the user the rest of the report
            log.exception("report section %s failed", stage.name)
            fragment = '<p class="failed">This section could not be drawn; see sleep.log.</p>'
        if fragment:
            sections.append(Section(stage.name, stage.description or stage.name, fragment))
    return sections


def write_report(date: dt.date, cfg: SleepConfig, paths: Paths, stages: list[Stage]) -> Path:
    """Write ``reports/{date}/summary.json`` and ``index.html``; return the page's path."""
    folder = paths.report(date)
    summary = build_summary(date, paths, stages)
    ctx = ReportContext(date, cfg, paths)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    page = env.get_template("index.html.j2").render(
        date=date.isoformat(),
        generated=dt.datetime.now().isoformat(timespec="seconds"),
        root=str(paths.root),
        sections=render_sections(summary, ctx, stages),
    )
    atomic_write_text(folder / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    index = atomic_write_text(folder / "index.html", page)
    log.info("report: %s", index)
    return index
