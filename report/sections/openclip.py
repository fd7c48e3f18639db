"""Report section of the ``openclip`` stage."""
from __future__ import annotations

from report import html as h


def render(summary: dict, ctx) -> str | None:
    """Report section: what was embedded for free-text search, or why nothing was."""
    result = summary.get("openclip")
    if not result:
        return None
    if result.get("note"):
        return f'<p class="muted">{h.esc(result["note"])}</p>'
    rows = [("model version", result.get("model_version")),
            ("frames embedded", f'{result.get("embedded")} of {result.get("frames")}'),
            ("clips", result.get("clips"))]
    failed = result.get("failed") or []
    return h.table(["", ""], rows) + "".join(
        f'<p class="muted">unreadable frame {h.esc(f["path"])}: {h.esc(f["reason"])}</p>' for f in failed[:50])
