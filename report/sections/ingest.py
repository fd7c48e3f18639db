"""The ingest section of the night's report: what each file became, and what was skipped."""
from __future__ import annotations

from report import html as h


def _yes(flag) -> str:
    return "yes" if flag else "no"


def render(summary: dict, ctx) -> str | None:
    """HTML for ``summary["ingest"]``: processed, skipped, ignored and removed files.

    Args:
        summary: the night's ``summary.json`` data.
        ctx: the report context (``ctx.cfg.report.max_listed_files`` caps each table).
    Returns:
        an HTML fragment, or None when ingest has not run.
    """
    ingest = summary.get("ingest")
    if not ingest:
        return None
    limit = ctx.cfg.report.max_listed_files
    parts = [f"<p>{len(ingest.get('processed', []))} file(s) ingested: "
             f"{ingest.get('clips', 0)} clips, {ingest.get('frames', 0)} frames, "
             f"{ingest.get('audio_segments', 0)} audio segments from "
             f"{h.esc(h.seconds(ingest.get('footage_seconds')))} of footage.</p>"]

    def capped(rows: list, title: str) -> str:
        more = f'<p class="muted">... and {len(rows) - limit} more (see summary.json)</p>' if len(rows) > limit else ""
        return f"<h3>{h.esc(title)}</h3>" + more

    processed = ingest.get("processed", [])
    if processed:
        rows = [(p["file"], h.seconds(p.get("duration_s")), p.get("clips"), p.get("frames"),
                 p.get("audio_segments"), p.get("wall_start") or "-", p.get("wall_start_from") or "-",
                 p.get("action", ""), p.get("note") or "") for p in processed[:limit]]
        parts.append(capped(processed, "Processed"))
        parts.append(h.table(["file", "duration", "clips", "frames", "audio", "recorded at", "time from",
                              "this run", "note"], rows))
    failed = ingest.get("failed", [])
    parts.append(capped(failed, f"Skipped ({len(failed)})"))
    if failed:
        parts.append(h.table(["file", "reason"], [(f["file"], f["reason"]) for f in failed[:limit]],
                             cls="failed"))
    else:
        parts.append('<p class="muted">No file was skipped.</p>')
    ignored = ingest.get("ignored", [])
    if ignored:
        parts.append(capped(ignored, f"Not recordings ({len(ignored)})"))
        parts.append(h.table(["file", "why"], [(f["file"], f["reason"]) for f in ignored[:limit]]))
    removed = ingest.get("removed", [])
    if removed:
        parts.append(capped(removed, f"Removed from the raw folder ({len(removed)}); their clips are kept"))
        parts.append(h.table(["file", "duration", "clips"],
                             [(r["file"], h.seconds(r.get("duration_s")), r.get("clips")) for r in removed[:limit]]))
    return "".join(parts)
