"""The top of the morning page: how much was recorded, and the day in one line."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from report import html as h


@dataclass(frozen=True)
class Headline:
    """What the page opens with: ``facts`` as (label, value), the one ``line``, the ``verdict``."""

    facts: list[tuple[str, str]]
    line: str
    verdict: str
    verdict_class: str


def _recorded(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def _episodes(summary: dict) -> tuple[list, list]:
    """The episodes stage's ``(episodes, highlights)`` lists, empty when it has not run."""
    result = summary.get("episodes")
    if not isinstance(result, dict):
        return [], []
    episodes, highlights = result.get("episodes"), result.get("highlights")
    return (episodes if isinstance(episodes, list) else [],
            highlights if isinstance(highlights, list) else [])


def surprise(summary: dict) -> str | None:
    """The top highlight's reason, in words (its first reason when it gives several)."""
    _, highlights = _episodes(summary)
    top = highlights[0] if highlights and isinstance(highlights[0], dict) else None
    if top is None:
        return None
    reason = top.get("reason") or top.get("reasons")
    if isinstance(reason, list):
        reason = reason[0] if reason else None
    if not reason:
        return None
    where = [f'clip {top["clip_id"]}'] if "clip_id" in top else []
    try:
        where.insert(0, dt.datetime.fromisoformat(top["when"]).strftime("%H:%M"))
    except (KeyError, TypeError, ValueError):  # no wall-clock time for this clip
        pass
    return f'{" · ".join(where)}: {reason}' if where else str(reason)


def verdict(summary: dict) -> tuple[str, str]:
    """``(sentence, css class)``: did every stage finish?"""
    stages = summary["stages"]
    failed = [n for n, s in stages.items() if s["status"] in ("failed", "interrupted")]
    if not stages:
        return "No stages are registered yet.", "muted"
    if failed:
        return (f'{len(failed)} stage(s) did not finish: {", ".join(failed)}. '
                "See sleep.log beside this page."), "failed"
    if all(s["status"] == "done" for s in stages.values()):
        return "Every stage completed.", "ok"
    return "Some stages have not run yet.", "muted"


def headline(summary: dict) -> Headline:
    """Hours recorded, clips, files, episodes (when the stage ran), and the day in one line."""
    ingest = summary.get("ingest") or {}
    facts = []
    if ingest:
        facts.append(("recorded", _recorded(ingest.get("footage_seconds") or 0)))
        facts.append(("clips", str(ingest.get("clips", 0))))
        processed, failed = len(ingest.get("processed", [])), len(ingest.get("failed", []))
        facts.append(("files", f"{processed}" + (f" ({failed} skipped)" if failed else "")))
    episodes, highlights = _episodes(summary)
    if "episodes" in summary:
        facts.append(("episodes", str(len(episodes))))
    if highlights:
        facts.append(("highlights", str(len(highlights))))
    total = sum(s["seconds"] or 0 for s in summary["stages"].values())
    facts.append(("night took", h.seconds(total)))
    sentence, cls = verdict(summary)
    return Headline(facts, surprise(summary) or sentence, sentence, cls)
