"""Report section of the ``probes`` stage: tonight's recall of the fixed probe set, and every
night's since the set was cut (read from the earlier nights' ``summary.json``)."""
from __future__ import annotations

import datetime as dt
import json

from core.sealed import SealedFileError
from report import html as h

KINDS = (("vision", "image", "photos"), ("audio", "sound", "sounds"))


def _figure(metrics: dict, prefix: str) -> str:
    if metrics.get(f"{prefix}_recall@1") is None:
        return "-"
    return f"{metrics[f'{prefix}_recall@1']:.3f} (chance {metrics.get(f'{prefix}_chance')})"


def history(ctx, set_date: str, tonight: dict) -> list[tuple[str, dict]]:
    """``(night, probes metrics)`` of every night up to tonight that measured the set cut on ``set_date``."""
    nights: list[tuple[str, dict]] = []
    folder = ctx.paths.report(ctx.date).parent
    for child in sorted(folder.iterdir()) if folder.is_dir() else []:
        try:
            night = dt.date.fromisoformat(child.name)
            summary = json.loads(ctx.paths.vault.read_text(child / "summary.json"))
        except (ValueError, OSError, SealedFileError):
            continue
        if night < ctx.date and (summary.get("probes") or {}).get("date") == set_date:
            nights.append((child.name, (summary.get("metrics") or {}).get("probes") or {}))
    return nights + [(ctx.date.isoformat(), tonight)]


def render(summary: dict, ctx) -> str | None:
    """Tonight's image and sound recall@1 against chance, then the set's history, night by night."""
    result = summary.get("probes")
    if not result:
        return None
    if result.get("note"):
        return f'<p class="muted">{h.esc(result["note"])}</p>'
    metrics = (summary.get("metrics") or {}).get("probes") or {}
    cut = " (cut tonight)" if result.get("cut_tonight") else ""
    parts = [f"<p>{result['probes']} probes cut from the recordings of {h.esc(result['date'])}{cut}: a photo "
             "between two stored frames and a 3-second sound per clip, never files the memory holds. "
             "Each searches the whole memory as a query would; it finds its moment when the top hit is "
             "its clip. Measured again every night, they show how well old memories survive.</p>"]
    rows = []
    for space, prefix, label in KINDS:
        r = (result.get("spaces") or {}).get(space) or {}
        if "note" in r:
            rows.append((label, "-", "-", r["note"]))
            continue
        searched = f"{r['clips']} clips in {', '.join(r['searched'])}"
        if r.get("vector_recall@1") is not None:  # photos: the best hits scored again by layout
            searched += f"; best hits ordered by layout (vector order alone: {r['vector_recall@1']:.3f})"
        rows.append((label, f"{r['found']}/{r['probes']}", _figure(metrics, prefix), searched))
    parts.append(h.table(["probes", "found", "recall@1", "searched"], rows))
    nights = history(ctx, result["date"], metrics)
    if len(nights) > 1:
        parts.append(h.table(["night", "image recall@1", "sound recall@1"],
                             [(night, _figure(m, "image"), _figure(m, "sound")) for night, m in nights]))
        series = {f"{prefix} recall@1": [m[f"{prefix}_recall@1"] for _, m in nights
                                         if m.get(f"{prefix}_recall@1") is not None]
                  for _, prefix, _ in KINDS}
        parts.append(h.line_chart(series, title=f"recall@1 of the probe set of {result['date']}, night by night",
                                  y_label="recall@1"))
    return "".join(parts)
