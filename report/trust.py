"""The report's own "Trust" sections: stage timings against the last week, the model versions
queries read, and the disk the root uses."""
from __future__ import annotations

import logging
import os
import statistics
from pathlib import Path

from report import html as h
from report.history import earlier_summaries

log = logging.getLogger(__name__)

DISK_FOLDERS = ("data", "memory", "checkpoints", "reports")


def timings_section(summary: dict, ctx) -> str:
    """Each stage's state and time tonight beside its median over the last week's nights."""
    stages = summary["stages"]
    if not stages:
        return '<p class="muted">No stages.</p>'
    earlier = earlier_summaries(ctx.paths, ctx.date)
    rows = []
    for name, s in stages.items():
        past = [e["stages"][name]["seconds"] for _, e in earlier
                if isinstance((e.get("stages") or {}).get(name), dict)
                and (e["stages"][name].get("status") == "done") and e["stages"][name].get("seconds") is not None]
        median = statistics.median(past) if past else None
        rows.append((name, s["status"], h.seconds(s["seconds"]),
                     f"{h.seconds(median)} ({len(past)} night(s))" if past else "-",
                     _ratio(s["seconds"], median), s.get("attempts") or "-", s["error"] or ""))
    total = sum(s["seconds"] or 0 for s in stages.values())
    past_totals = [sum(st.get("seconds") or 0 for st in (e.get("stages") or {}).values()) for _, e in earlier]
    median_total = statistics.median(past_totals) if past_totals else None
    rows.append(("all stages", "", h.seconds(total), h.seconds(median_total), _ratio(total, median_total), "", ""))
    # A model that could not continue last night's weights (its config changed the network's
    # shape) started afresh: say so here, whichever stage it was (stages.common.resume_state).
    restarts = [(name, (summary.get(name) or {}).get("restart_reason")) for name in stages]
    notes = "".join(f'<p class="warning">{h.esc(name)} started afresh: {h.esc(reason)}</p>'
                    for name, reason in restarts if reason)
    return (h.table(["stage", "status", "tonight", "median of the last week", "tonight / median",
                     "attempts", "error"], rows) + notes)


def _ratio(tonight: float | None, median: float | None) -> str:
    if tonight is None or not median:
        return "-"
    return f"{tonight / median:.2f}x"


def versions_section(summary: dict, ctx) -> str | None:
    """The version of each space that queries read now, its coverage, and tonight's new versions."""
    from memory import open_database, version_table

    if not ctx.paths.database.exists():
        return None
    engine = open_database(ctx.paths.database)
    try:
        table = version_table(engine)
    finally:
        engine.dispose()
    parts = []
    tonight = sorted({str(v["model_version"]) for v in summary.values()
                      if isinstance(v, dict) and v.get("model_version")})
    if tonight:
        parts.append(f'<p>Written tonight: {h.esc(", ".join(tonight))}.</p>')
    active = [r for r in table if r.get("active")]
    if active:
        rows = [(r["space"], r["version"], r.get("clips"), f'{r.get("days")} of {r.get("days_total")}',
                 "yes" if r.get("complete") else f'no ({r.get("missing_clips")} clips missing)',
                 r.get("switched_at") or "-") for r in active]
        parts.append(h.table(["space", "version searched", "clips", "days", "complete", "switched at"], rows))
        others = len(table) - len(active)
        if others:
            parts.append(f'<p class="muted">{others} other version(s) kept; '
                         '<code>sleep.py memory versions</code> lists them.</p>')
    return "".join(parts) or None


def folder_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (symbolic links not followed); 0 when missing."""
    total, stack = 0, [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:  # removed while we walk (retention, another night)
                        continue
        except OSError:
            continue
    return total


def disk_section(summary: dict, ctx) -> str:
    """Bytes under each top folder of the root, and the free space left on its disk."""
    used = {name: folder_bytes(ctx.paths.root / name) for name in DISK_FOLDERS}
    rows = [(f"{name}/", h.size(n)) for name, n in used.items()]
    rows.append(("in all", h.size(sum(used.values()))))
    try:
        stat = os.statvfs(ctx.paths.root)
        rows.append(("free on this disk", h.size(stat.f_bavail * stat.f_frsize)))
    except OSError:
        pass
    return h.table(["folder", "size"], rows)
