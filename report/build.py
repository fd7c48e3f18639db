"""Assemble ``summary.json`` from the ledger and render ``index.html`` from its sections.

Both are written through the root's vault: sealed when the memory is encrypted, so the
page is read back decrypted with :func:`read_report` (``sleep.py report --print``, or
``sleep.py serve`` at ``/report/{date}``).

Section API: a stage's section is ``report/sections/{stage}.py``, whose ``render`` takes
``(summary: dict, ctx: ReportContext)`` and returns an HTML fragment (or ``None`` to
leave its section out). The page opens with a headline (:mod:`report.headline`), then three
groups: the day (episodes, dreams), learning (curves over the last week, memory health, the
learners' sections) and trust (ingest, stage timings, model versions, disk). The headline,
curves, health, timings, versions and disk sections are this package's own.
"""
from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jinja2

from core.config import SleepConfig
from core.errors import LockHeld, UsageError
from core.lock import lock_holder
from core.paths import Paths
from memory import ledger
from memory.db import make_sessionmaker, open_database
from report.headline import headline
from report.learning import curves_section, health_section
from report.trust import disk_section, timings_section, versions_section
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
    group: str = "learning"


# (key, title, stage sections in order). A stage in no group is drawn under learning, after
# the listed ones; the package's own sections go where _OWN puts them.
GROUPS = (
    ("day", "The day", ("episodes", "dream")),
    ("learning", "Learning", ("vision", "audio", "align", "sae", "reconstruct", "inpaint", "probes", "reembed",
                              "journal", "openclip")),
    ("trust", "Trust", ("ingest", "keep", "retention")),
)
# (group, key, title, renderer, before the group's stage sections?)
_OWN = (
    ("learning", "curves", "Training curves against the last week", curves_section, True),
    ("learning", "health", "Memory health, night by night", health_section, True),
    ("trust", "timings", "Stage timings against the last week", timings_section, False),
    ("trust", "versions", "Model versions", versions_section, False),
    ("trust", "disk", "Disk used", disk_section, False),
)


@dataclass(frozen=True)
class Group:
    key: str
    title: str
    sections: list[Section]


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
            # The runner holds the night's lock, and rebuild_report refuses while that night
            # runs, so nothing is really running: it was killed.
            entry["status"] = "interrupted"
        summary["stages"][stage.name] = entry
        result = dict(state.result or {})
        metrics = result.pop("metrics", None)
        if metrics is not None:
            summary["metrics"][stage.name] = metrics
        if result:
            summary[stage.name] = result
    return summary


def section_renderer(stage_name: str) -> Callable[[dict, ReportContext], str | None] | None:
    """``report.sections.{stage_name}.render``, or ``None`` for a stage without a section."""
    try:
        module = importlib.import_module(f"report.sections.{stage_name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"report.sections.{stage_name}":
            return None
        raise
    return module.render


def _draw(key: str, render, summary: dict, ctx: ReportContext) -> str | None:
    try:
        return render(summary, ctx)
    except Exception:  # a broken section must not cost the user the rest of the report
        log.exception("report section %s failed", key)
        return '<p class="failed">This section could not be drawn; see sleep.log.</p>'


def render_sections(summary: dict, ctx: ReportContext, stages: list[Stage]) -> list[Section]:
    """Every section of the page that has something to say, in page order, each with its group."""
    placed = {name: group for group, _, names in GROUPS for name in names}
    ordered = {group: [n for n in names if any(s.name == n for s in stages)] for group, _, names in GROUPS}
    ordered["learning"] += [s.name for s in stages if s.name not in placed]
    by_name = {s.name: s for s in stages}
    sections: list[Section] = []
    for group, _, _ in GROUPS:
        own = [(key, title, render, first) for g, key, title, render, first in _OWN if g == group]
        drawn = [(key, title, render) for key, title, render, first in own if first]
        for name in ordered[group]:
            render = section_renderer(name)
            if render is not None:
                drawn.append((name, by_name[name].description or name, render))
        drawn += [(key, title, render) for key, title, render, first in own if not first]
        for key, title, render in drawn:
            fragment = _draw(key, render, summary, ctx)
            if fragment:
                sections.append(Section(key, title, fragment, group))
    return sections


def group_sections(sections: list[Section]) -> list[Group]:
    """The page's groups in order, each with its sections; a group with none is left out."""
    groups = [Group(key, title, [s for s in sections if s.group == key]) for key, title, _ in GROUPS]
    return [g for g in groups if g.sections]


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
        headline=headline(summary),
        groups=group_sections(render_sections(summary, ctx, stages)),
    )
    # Sealed when the memory is: the page shows its moments, file names and journal.
    paths.vault.write_text(folder / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    index = paths.vault.write_text(folder / "index.html", page)
    log.info("report: %s", index)
    return index


def read_report(date: dt.date, paths: Paths) -> str:
    """The text of ``reports/{date}/index.html``, decrypted when the memory is sealed: what
    ``sleep.py report --print`` prints and ``sleep.py serve`` shows at ``/report/{date}``.

    Raises:
        UsageError: no report of that night under the root.
        SealedFileError: the page is sealed and damaged.
    """
    page = paths.report(date) / "index.html"
    try:
        return paths.vault.read_text(page)
    except FileNotFoundError:
        raise UsageError(f"no report of {date} under {paths.root} ({page} does not exist); "
                         "sleep.py report --date D writes it from the ledger") from None


def rebuild_report(date: dt.date, cfg: SleepConfig, paths: Paths, stages: list[Stage] | None = None) -> Path:
    """Write the report of a night already in the ledger again, from what is stored; train nothing.

    Args:
        date: the night.
        cfg: the config the sections read (limits such as ``report.max_listed_files``).
        paths: the layout under the root.
        stages: the stage list (default :data:`stages.STAGES`, as the runner uses).
    Returns:
        the path of ``reports/{date}/index.html``.
    Raises:
        UsageError: no memory under the root, or no night of ``date`` in its ledger.
        LockHeld: the night of ``date`` is running now (its report is written when it ends).
    """
    from stages import STAGES

    stages = STAGES if stages is None else stages
    if not paths.database.exists():
        raise UsageError(f"no memory under {paths.root} ({paths.database} does not exist): no night to report")
    holder = lock_holder(paths.lock)
    if holder and f"night {date.isoformat()}" in holder:
        raise LockHeld(f"the night of {date} is running now ({holder}); its report is written when it ends")
    engine = open_database(paths.database)
    try:
        with make_sessionmaker(engine)() as session:
            known = bool(ledger.night(session, date.isoformat()))
    finally:
        engine.dispose()
    if not known:
        raise UsageError(f"no night of {date} in the ledger under {paths.root}; "
                         "sleep.py status lists the nights there are")
    return write_report(date, cfg, paths, stages)
