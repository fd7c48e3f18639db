"""The report's own "Learning" sections: tonight's training curves over the last week's, and
the memory's health night by night (probe recall, collapse, drift, the dictionary's state)."""
from __future__ import annotations

from report import html as h
from report.history import earlier_summaries, pick

# (title, dotted path in summary.json, y label): one overlaid chart each, when tonight has it.
CURVES = (
    ("Vision (I-JEPA) training loss", "metrics.vision.loss_curve", "smooth L1"),
    ("Audio (CPC) training loss", "metrics.audio.train_loss_curve", "InfoNCE"),
    ("Audio-visual alignment loss", "metrics.align.train_loss_curve", "contrastive"),
    ("Sparse autoencoder", "metrics.sae.train_mse_curve", "normalised MSE"),
    ("Reconstructor (MLP)", "metrics.reconstruct.loss_curves.mlp", "loss"),
    ("Reconstructor (Hopfield)", "metrics.reconstruct.loss_curves.hopfield", "loss"),
    ("Dream decoder", "metrics.dream.loss_curve", "MSE (v)"),
    ("Journal sparse autoencoder", "metrics.journal.train_mse_curve", "normalised MSE"),
)

# (column, dotted path): a night's figures of memory health; a column nobody reports is left out.
HEALTH = (
    ("image recall@1 (probes)", "metrics.probes.image_recall@1"),
    ("sound recall@1 (probes)", "metrics.probes.sound_recall@1"),
    ("vision effective rank", "metrics.vision.effective_rank"),
    ("vision drift from last night (2 - 2 cos)", "metrics.vision.distill_loss.final"),
    ("audio drift from last night", "metrics.audio.distill_loss.final"),
    ("SAE unexplained variance", "metrics.sae.fvu"),
    ("SAE neurons used", "metrics.sae.neurons_used"),
    ("SAE dead share", "metrics.sae.dead_share"),
    ("SAE neurons kept from last night", "sae.identities.kept"),
    ("their mean match cosine", "sae.identities.match_cosine.mean"),
    ("SAE neurons born", "sae.identities.born"),
    ("SAE neurons lost", "sae.identities.lost"),
)


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def curves_section(summary: dict, ctx) -> str | None:
    """One chart per training curve tonight has, the last week's nights drawn grey behind it."""
    earlier = earlier_summaries(ctx.paths, ctx.date)
    charts = []
    for title, path, y_label in CURVES:
        tonight = pick(summary, path)
        if not isinstance(tonight, list) or not tonight:
            continue
        series = {night: curve for night, s in earlier
                  if isinstance(curve := pick(s, path), list) and curve}
        faded = list(series)
        series["tonight"] = tonight
        charts.append(h.line_chart(series, title=title, y_label=y_label, faded=faded))
    if not charts:
        return None
    nights = len({n for n, _ in earlier})
    intro = (f'<p class="muted">Tonight in colour; the {nights} night(s) before it in grey, the most recent '
             'darkest. Each curve is against its own logged step.</p>' if nights else
             '<p class="muted">No earlier night to compare with yet.</p>')
    return intro + '<div class="charts">' + "".join(charts) + "</div>"


def health_section(summary: dict, ctx) -> str | None:
    """Probe recall, effective rank, drift and the dictionary's figures, one row a night."""
    nights = earlier_summaries(ctx.paths, ctx.date) + [(ctx.date.isoformat(), summary)]
    columns = [(label, path) for label, path in HEALTH
               if any(_number(pick(s, path)) is not None for _, s in nights)]
    if not columns:
        return None
    rows = []
    for night, s in nights:
        values = [_number(pick(s, path)) for _, path in columns]
        if any(v is not None for v in values):
            rows.append((night, *("-" if v is None else f"{v:.4g}" for v in values)))
    parts = [h.table(["night", *(label for label, _ in columns)], rows)]
    recall = {label: [v for _, s in nights if (v := _number(pick(s, path))) is not None]
              for label, path in columns if "recall" in label}
    if any(len(v) > 1 for v in recall.values()):
        parts.append(h.line_chart(recall, title="Probe recall@1, night by night", y_label="recall@1"))
    return "".join(parts)
