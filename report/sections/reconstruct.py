"""Report section of the ``reconstruct`` stage: how well fragments find and complete their clip."""
from __future__ import annotations

from report import html as h

LABELS = {"fragment": "fragment as it is", "mlp": "MLP completion", "hopfield": "Hopfield completion",
          "pattern": "pattern-layer completion"}


def render(summary: dict, ctx) -> str | None:
    """Top-1/top-5 clip retrieval and cosine to the clip for fragments as they are and completed,
    over all held-out fragments and per kind of damage."""
    result = summary.get("reconstruct")
    metrics = (summary.get("metrics") or {}).get("reconstruct") or {}
    if not result:
        return None
    if not result.get("trained"):
        return f'<p class="muted">{h.esc(result.get("note") or "not trained tonight")}</p>'
    kinds = ", ".join(f"{n} {k}" for k, n in sorted((result.get("fragment_kinds") or {}).items()))
    parts = [h.table(["", ""], [
        ("stored clips (Hopfield patterns)", f'{result.get("bank")}: {result.get("clips")} of tonight '
                                             f'({result.get("input_version")}){_replayed(result.get("replay"))}'),
        ("fragments", f'{result.get("fragments")} from {result.get("frames")} frames{_views(result)} ({kinds})'
                      f'{_fresh_noise(result)}'),
        ("continued from", result.get("resumed_from") or result.get("restart_reason") or "fresh weights"),
        ("training", f'{result.get("steps")} steps on {result.get("trained_on")} fragments, '
                     f'{h.seconds(metrics.get("train_seconds"))}; Hopfield beta {metrics.get("hopfield_beta")}'),
        ("query --fragment completes with", f'{metrics.get("chosen")} (models.reconstruct.use: {metrics.get("use")})'),
    ])]
    rows = [(label, metrics[key]["top1"], metrics[key]["top5"], metrics[key]["cosine"])
            for key, label in LABELS.items() if key in metrics]
    parts.append(f'<p>{metrics.get("fragments")} fragments of {h.esc(metrics.get("measured_on"))}: the share whose '
                 f'own clip is the nearest stored clip (chance {metrics.get("chance_top1")}), among the five '
                 f'nearest, and the mean cosine to the clip\'s embedding.</p>')
    parts.append(h.table(["", "top 1", "top 5", "cosine to the clip"], rows))
    by_kind = metrics.get("by_kind") or {}
    if by_kind:
        variants = [k for k in LABELS if all(k in row for row in by_kind.values())]
        parts.append('<p>Per kind of damage: top 1 (top 5) of each, on the same held-out fragments.</p>')
        parts.append(h.table(["damage", "fragments", *(LABELS[v] for v in variants)], [
            (kind, row.get("fragments"), *(f'{row[v]["top1"]} ({row[v]["top5"]})' for v in variants))
            for kind, row in by_kind.items()]))
    by_origin = metrics.get("by_origin") or {}
    if len(by_origin) > 1:  # replayed clips held out too: how earlier days' fragments fare beside tonight's
        variants = [k for k in LABELS if all(k in row for row in by_origin.values())]
        parts.append('<p>Tonight\'s frames and earlier days\' replayed keyframes apart: top 1 (top 5).</p>')
        parts.append(h.table(["fragments of", "fragments", *(LABELS[v] for v in variants)], [
            (origin, row.get("fragments"), *(f'{row[v]["top1"]} ({row[v]["top5"]})' for v in variants))
            for origin, row in by_origin.items()]))
    curves = metrics.get("loss_curves") or {}
    if curves:
        parts.append(h.line_chart({f"{k} loss": v for k, v in curves.items()}, title="Reconstructor training",
                                  y_label="loss"))
    return "".join(parts)


def _replayed(replay: dict | None) -> str:
    if not replay or not replay.get("clips"):
        return ""
    return (f', {replay["clips"]} replayed from {replay["days"]} earlier day{"s" if replay["days"] != 1 else ""} '
            f'(kept keyframes; {replay["fragments"]} fragments)')


def _views(result: dict) -> str:
    """How many damaged views of each picture (older nights did not record it)."""
    views = result.get("views_per_frame")
    return f", {views} damaged views of each" if views else ""


def _fresh_noise(result: dict) -> str:
    """The noisy fragments drawn afresh each step (older nights did not draw them)."""
    share = result.get("fresh_noise_share")
    return f"; each step adds {share:.0%} more, clean frames with fresh noise" if share else ""
