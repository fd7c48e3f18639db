"""Report section of the ``reembed`` stage: which version each space's queries read, and what is left."""
from __future__ import annotations

from report import html as h


def _coverage(cov: dict | None) -> str:
    if not cov:
        return "-"
    missing = f", {cov['missing_clips']} clip(s) missing" if cov.get("missing_clips") else ""
    return f"{cov['clips']} clips, {cov['days']}/{cov['days_total']} days{missing}"


def render(summary: dict, ctx) -> str | None:
    """Per space: the active version and its coverage, tonight's version, time and rate, days left."""
    result = summary.get("reembed")
    metrics = (summary.get("metrics") or {}).get("reembed") or {}
    if not result:
        return None
    spaces = result.get("spaces") or {}
    if result.get("note"):
        return f'<p class="muted">{h.esc(result["note"])}</p>'
    rows, notes = [], []
    for space, r in spaces.items():
        if "days_done" not in r:
            notes.append(f"{space}: {r.get('note')}")
            continue
        rate = f", {r['clips_per_second']} clips/s" if r.get("clips_per_second") else ""
        left = f"{r['days_left']} day(s)" if r["days_left"] else "nothing"
        if r.get("blocked"):
            left += f" ({len(r['blocked'])} waiting for the vectors they are computed from)"
        rows.append((space, r.get("active") or "-", _coverage(r.get("active_coverage")), r["version"],
                     _coverage(r.get("coverage")),
                     f"{r['days_done']} day(s), {r['clips']} clips, {r['missing']} missing, "
                     f"{h.seconds(r['seconds'])}{rate}", left))
    parts = ["<p>Queries read each space's active version: the newest that covers every day with "
             "vectors in the space. Tonight's version becomes active once every earlier day has been "
             "embedded again with tonight's encoders (from each clip's kept keyframe and sound).</p>"]
    if rows:
        parts.append(h.table(["space", "active version", "its coverage", "tonight's version", "its coverage",
                              "re-embedded tonight", "left for the next run"], rows))
    if metrics.get("keyframes"):
        parts.append(f"<p>{metrics['keyframes']} keyframes at {metrics.get('keyframes_per_second')} per second; "
                     f"re-embedding took {h.seconds(metrics.get('seconds'))} in all.</p>")
    if result.get("stopped_early"):
        parts.append('<p class="warning">memory.reembed.max_minutes was spent before every day was re-embedded; '
                     "<code>sleep.py memory reembed</code> continues now, or the next night starts again "
                     "with its own version.</p>")
    maps = [(space, r["map"]) for space, r in spaces.items() if r.get("map")]
    if maps:
        parts.append("<p>Until then a query embedded by tonight's encoder reaches the days not yet "
                     "re-embedded through a map into the active version, fitted on clips both versions hold "
                     "(figures on clips the fit did not see):</p>")
        map_rows = []
        for space, fitted in maps:
            if fitted.get("note"):
                map_rows.append((space, fitted.get("to_version"), "-", "-", "-", fitted["note"]))
                continue
            best = fitted.get(fitted["chosen"]) or {}
            map_rows.append((space, fitted["to_version"], fitted["chosen"], best.get("cosine", "-"),
                             f'{best.get("recall@1", "-")} (chance {best.get("chance", "-")})',
                             f'{fitted.get("fit_pairs")} clips fitted, {best.get("pairs", 0)} held out'))
        parts.append(h.table(["space", "into", "map", "held-out cosine", "held-out recall@1", "fit"], map_rows))
    dropped = [f"{space}: {', '.join(r['dropped'])}" for space, r in spaces.items() if r.get("dropped")]
    if dropped:
        freed = sum(r.get("bytes_freed") or 0 for r in spaces.values())
        parts.append(f"<p>Superseded versions dropped (the active one holds every clip they held; "
                     f"{freed / 1e6:.1f} MB freed): {h.esc('; '.join(dropped))}.</p>")
    kept = [f"{space}: {version} ({why})" for space, r in spaces.items()
            for version, why in (r.get("kept_superseded") or {}).items()]
    if kept:
        parts.append(f'<p class="muted">Older versions kept: {h.esc("; ".join(kept))}.</p>')
    parts += [f'<p class="muted">{h.esc(n)}</p>' for n in notes]
    return "".join(parts)
