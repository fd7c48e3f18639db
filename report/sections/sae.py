"""Report section of the ``sae`` stage: the dictionary's health and its strongest memory traces."""
from __future__ import annotations

from report import html as h


def _thumbnail(ctx, moment: dict) -> str:
    caption = f'clip {moment["clip_id"]} · {moment["activation"]:.2f}'
    path = ctx.paths.root / moment["frame_path"] if moment.get("frame_path") else None
    if path is None or not path.is_file():  # an audio-only clip, or footage past retention
        return f'<figure><div class="muted">(no frame)</div><figcaption>{h.esc(caption)}</figcaption></figure>'
    return (f'<figure><img src="{h.image_data_uri(path)}" alt="{h.esc(caption)}">'
            f'<figcaption>{h.esc(caption)}</figcaption></figure>')


def render(summary: dict, ctx) -> str | None:
    """FVU, sparsity and neurons used; the training curve; each strong neuron with its moments."""
    result = summary.get("sae")
    metrics = (summary.get("metrics") or {}).get("sae") or {}
    if not result:
        return None
    if not result.get("trained"):
        return f'<p class="muted">{h.esc(result.get("note") or "not trained tonight")}</p>'
    parts = [h.table(["", ""], [
        ("input", f'{result.get("rows")} {result.get("input_space")} vectors of {result.get("input_version")}'),
        ("model version", result.get("model_version")),
        ("continued from", result.get("resumed_from") or result.get("restart_reason") or "a fresh dictionary"),
        ("neurons, active per moment", f'{metrics.get("latents")}, k = {metrics.get("k")} '
                                       f'(measured {metrics.get("active_per_vector")})'),
        ("neurons used tonight", f'{metrics.get("neurons_used")} (dead {metrics.get("dead_share")})'),
        ("variance unexplained (FVU)", f'{metrics.get("fvu")} on {metrics.get("measured_on")}'),
        ("moments written / silent", f'{result.get("written")} / {result.get("silent_rows")}'),
        ("training", f'{result.get("steps")} steps, {h.seconds(metrics.get("train_seconds"))}'),
    ])]
    if metrics.get("train_mse_curve"):
        parts.append(h.line_chart({"normalised MSE": metrics["train_mse_curve"],
                                   "dead share": metrics.get("train_dead_curve", [])},
                                  title="Sparse autoencoder training", y_label="share"))
    neurons = result.get("neurons") or []
    if neurons:
        parts.append("<p>The neurons that are the strongest trace of the most clips, with the moments "
                     "that make them fire most. Find more with <code>sleep.py query --neuron N</code>.</p>")
    for neuron in neurons:
        parts.append(f'<h3>neuron {neuron["neuron"]}: strongest for {neuron["clips_led"]} clip(s), '
                     f'fires in {neuron["rows_fired"]} row(s)</h3>')
        parts.append('<div class="grid">' + "".join(_thumbnail(ctx, m) for m in neuron["top"]) + "</div>")
    return "".join(parts)
