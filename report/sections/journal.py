"""Report section of the ``journal`` stage: the day's entries, its malformed lines, and the
journal's memory traces (the text sparse autoencoder's strongest neurons with their entries).
Every text the person wrote is escaped."""
from __future__ import annotations

from report import html as h

MAX_ENTRIES = 200  # a long journal is summarised, not printed whole


def _entries(result: dict) -> str:
    entries = result.get("day_entries") or []
    rows = [(e.get("at") or "", e.get("text"), e.get("origin")) for e in entries[:MAX_ENTRIES]]
    more = len(entries) - len(rows)
    tail = f'<p class="muted">and {more} more</p>' if more > 0 else ""
    return h.table(["time", "entry", "from"], rows) + tail if rows else ""


def _neurons(sae: dict) -> str:
    neurons = sae.get("neurons") or []
    if not neurons:
        return ""
    parts = [("<p>The neurons that are the strongest trace of the most entries, with the entries that make "
             "them fire most.</p>")]
    for neuron in neurons:
        parts.append(f'<h3>neuron {h.esc(neuron["neuron"])}: strongest for {h.esc(neuron["entries_led"])} '
                     f'entr{"y" if neuron["entries_led"] == 1 else "ies"}</h3>')
        parts.append(h.table(["day", "time", "entry", "activation"], [
            (m.get("date"), m.get("at") or "", m.get("text"), f'{m.get("activation", 0):.2f}')
            for m in neuron.get("top", [])]))
    return "".join(parts)


def render(summary: dict, ctx) -> str | None:
    """Counts and versions, notes on malformed lines, the day's entries, the dictionary's figures
    and its strongest neurons."""
    result = summary.get("journal")
    if not result:
        return None
    notes = "".join(f'<p class="muted">{h.esc(n)}</p>' for n in result.get("notes") or [])
    if result.get("note"):
        return f'<p class="muted">{h.esc(result["note"])}</p>' + notes
    sae = result.get("sae") or {}
    metrics = (summary.get("metrics") or {}).get("journal") or {}
    rows = [("files", ", ".join(result.get("files") or []) or "none (entries stored earlier)"),
            ("entries today", (f'{result.get("entries")} ({result.get("added")} added, '
                              f'{result.get("removed")} removed since the last run)')),
            ("entries in the memory", metrics.get("memory_entries")),
            ("embedded tonight", f'{result.get("embedded")} as {result.get("text_version")} (space text)')]
    if sae.get("trained"):
        rows += [("text dictionary", (f'{sae.get("model_version")} (space text_sae), {metrics.get("latents")} '
                                     f'neurons, k = {metrics.get("k")}')),
                 ("continued from", sae.get("resumed_from") or sae.get("restart_reason") or "a fresh dictionary"),
                 ("variance unexplained (FVU)", f'{metrics.get("fvu")} on {metrics.get("measured_on")}'),
                 ("neurons used", f'{metrics.get("neurons_used")} (dead {metrics.get("dead_share")})'),
                 ("training", f'{sae.get("steps")} steps, {h.seconds(metrics.get("train_seconds"))}')]
    elif sae.get("note"):
        rows.append(("text dictionary", sae["note"]))
    parts = [h.table(["", ""], rows), notes, _entries(result)]
    if metrics.get("train_mse_curve"):
        parts.append(h.line_chart({"normalised MSE": metrics["train_mse_curve"]},
                                  title="Text sparse autoencoder training", y_label="share"))
    parts.append(_neurons(sae))
    parts.append("<p>Search it with <code>sleep.py query --journal \"words\"</code>; add to it with "
                 "<code>sleep.py journal add \"...\" --at HH:MM</code>.</p>")
    return "".join(parts)
