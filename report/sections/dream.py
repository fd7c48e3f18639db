"""Report section of the ``dream`` stage: the night's dreams, and how well they follow their embedding."""
from __future__ import annotations

from report import html as h


def render(summary: dict, ctx) -> str | None:
    """The dream strips with captions, the fidelity figures beside chance, the loss curve."""
    result = summary.get("dream")
    metrics = (summary.get("metrics") or {}).get("dream") or {}
    if not result:
        return None
    if not result.get("trained"):
        return f'<p class="muted">{h.esc(result.get("note") or "no dreams tonight")}</p>'
    folder = ctx.paths.report(ctx.date)
    figures = []
    for item in result.get("dreams") or []:
        path = folder / item["file"]
        if path.is_file():
            figures.append(f'<figure><img src="{h.image_data_uri(path)}" alt="{h.esc(item["caption"])}" '
                           f'style="max-width: 400px"><figcaption>{h.esc(item["caption"])}</figcaption></figure>')
    parts = ['<div class="grid">' + "".join(figures) + "</div>"] if figures else []
    if metrics.get("budget_cut"):
        parts.append(f'<p class="status failed">Shortened: {h.esc(metrics["budget_cut"])}.</p>')
    parts.append(h.table(["", ""], [
        ("decoder", f'{result.get("model_version")}, {result.get("frames")} frames, continued from '
                    f'{result.get("resumed_from") or result.get("restart_reason") or "nothing (first night)"}'),
        ("training", f'{metrics.get("steps")} steps, {h.seconds(metrics.get("train_seconds"))}, '
                     f'{metrics.get("images_per_second")} images/s'),
        ("dreams that look like their own clip", f'{metrics.get("fidelity")} of {metrics.get("fidelity_dreams")} '
                                                 f'(unconditional dreams {metrics.get("fidelity_unconditional")}, '
                                                 f'chance {metrics.get("fidelity_chance")})'),
    ]))
    if metrics.get("loss_curve"):
        parts.append(h.line_chart({"loss": metrics["loss_curve"]}, title="Dream decoder training", y_label="MSE (v)"))
    return "".join(parts)
