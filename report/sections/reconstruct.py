"""Report section of the ``reconstruct`` stage: how well fragments find and complete their clip."""
from __future__ import annotations

from report import html as h

LABELS = {"fragment": "fragment as it is", "mlp": "MLP completion", "hopfield": "Hopfield completion"}


def render(summary: dict, ctx) -> str | None:
    """Top-1/top-5 clip retrieval and cosine to the clip for fragments as they are and completed."""
    result = summary.get("reconstruct")
    metrics = (summary.get("metrics") or {}).get("reconstruct") or {}
    if not result:
        return None
    if not result.get("trained"):
        return f'<p class="muted">{h.esc(result.get("note") or "not trained tonight")}</p>'
    kinds = ", ".join(f"{n} {k}" for k, n in sorted((result.get("fragment_kinds") or {}).items()))
    parts = [h.table(["", ""], [
        ("stored clips (Hopfield patterns)", f'{result.get("bank")} of {result.get("clips")} ({result.get("input_version")})'),
        ("fragments", f'{result.get("fragments")} from {result.get("frames")} frames ({kinds})'),
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
    curves = metrics.get("loss_curves") or {}
    if curves:
        parts.append(h.line_chart({f"{k} loss": v for k, v in curves.items()}, title="Reconstructor training",
                                  y_label="loss"))
    return "".join(parts)
