"""Report section of the ``keep`` stage: what each clip keeps for re-embedding after retention."""
from __future__ import annotations

from report import html as h


def _size(n_bytes) -> str:
    if n_bytes is None:
        return "-"
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes:.0f} B"


def render(summary: dict, ctx) -> str | None:
    """Clips kept, keyframes and snippets, storage per clip, and the files that could not be read.

    Args:
        summary: the night's ``summary.json`` data.
        ctx: the report context (``ctx.cfg.report.max_listed_files`` caps the skipped table).
    Returns:
        an HTML fragment, or None when the stage has not run.
    """
    result = summary.get("keep")
    if not result:
        return None
    written = result.get("written") or {}
    facts = [
        ("clips kept", f'{result.get("kept", 0)} of {result.get("clips", 0)}'),
        ("keyframes", f'{result.get("keyframes", 0)} ({written.get("keyframes", 0)} written tonight), '
                      f'short side {result.get("keyframe_size")} px, '
                      f'JPEG quality {result.get("jpeg_quality")}'),
        ("sound snippets", f'{result.get("snippets", 0)} ({written.get("snippets", 0)} written tonight), '
                           f'16 kHz mono {str(result.get("snippet_format", "")).upper()}'),
        ("storage", f'{_size(result.get("bytes_stored"))} for the day, '
                    f'{_size(result.get("bytes_per_clip"))} per clip'),
        ("written tonight", _size(result.get("bytes_written"))),
    ]
    parts = ["<p>Each clip keeps its middle frame and its sound after retention removes the "
             "footage, so that later encoders can embed the day again.</p>", h.table(["", ""], facts)]
    skipped = result.get("skipped") or []
    limit = ctx.cfg.report.max_listed_files
    parts.append(f"<h3>Skipped ({len(skipped)})</h3>")
    if skipped:
        if len(skipped) > limit:
            parts.append(f'<p class="muted">... and {len(skipped) - limit} more (see summary.json)</p>')
        parts.append(h.table(["clip", "kind", "file", "reason"],
                             [(s.get("clip_id"), s.get("kind"), s.get("file"), s.get("reason"))
                              for s in skipped[:limit]], cls="failed"))
    else:
        parts.append('<p class="muted">Every frame and segment could be read.</p>')
    return "".join(parts)
