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


def _figures(metrics: dict) -> list[tuple[str, str]]:
    """Explained variance, mean L0 and the two dead shares with their windows (summaries from
    before these figures lack them: no row then)."""
    on = metrics.get("measured_on")
    rows = [("explained variance", "explained_variance", f'{metrics.get("explained_variance")} on {on}'),
            ("mean L0 (active neurons per vector)", "mean_l0", f'{metrics.get("mean_l0")} on {on}'),
            ("dead share, tonight's rows", "dead_window",
             f'{metrics.get("dead_share")} ({metrics.get("dead_window")})'),
            ("dead share, training", "dead_share_training",
             f'{metrics.get("dead_share_training")} ({metrics.get("dead_training_window")})')]
    return [(label, text) for label, key, text in rows if metrics.get(key) is not None]


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
        ("kind", metrics.get("kind") or "topk"),
        ("neurons, active per moment", (f'{metrics.get("latents")}, k = {metrics.get("k")} '
                                        f'(measured {metrics.get("active_per_vector")})')),
        ("neurons used tonight", f'{metrics.get("neurons_used")} (dead {metrics.get("dead_share")})'),
        ("variance unexplained (FVU)", f'{metrics.get("fvu")} on {metrics.get("measured_on")}'),
        *_figures(metrics),
        ("moments written / silent", f'{result.get("written")} / {result.get("silent_rows")}'),
        ("training", f'{result.get("steps")} steps, {h.seconds(metrics.get("train_seconds"))}'),
    ])]
    if metrics.get("train_mse_curve"):
        parts.append(h.line_chart({"normalised MSE": metrics["train_mse_curve"],
                                   "dead share": metrics.get("train_dead_curve", [])},
                                  title="Sparse autoencoder training", y_label="share"))
    parts.append(_identities(result.get("identities")))
    neurons = result.get("neurons") or []
    if neurons:
        parts.append("<p>The neurons that are the strongest trace of the most clips, with the moments "
                     "that make them fire most. Find more with <code>sleep.py query --neuron ID</code>; "
                     "name one with <code>sleep.py neuron name ID kitchen</code>.</p>")
    for neuron in neurons:
        name = f' ({h.esc(neuron["name"])})' if neuron.get("name") else ""
        parts.append(f'<h3>neuron {neuron["neuron"]}{name}: strongest for {neuron["clips_led"]} clip(s), '
                     f'fires in {neuron["rows_fired"]} row(s)</h3>')
        parts.append('<div class="grid">' + "".join(_thumbnail(ctx, m) for m in neuron["top"]) + "</div>")
    return "".join(parts)


def _identities(identities: dict | None) -> str:
    """Neurons kept from last night (with their match cosine), born tonight and lost."""
    if not identities:
        return ""
    if identities.get("previous_version") is None:
        return (f'<p>First night of this dictionary: {identities["born"]} neurons born; from tomorrow each '
                f'keeps its id and name while its decoder direction stays within cosine '
                f'{identities["threshold"]} of tonight\'s.</p>')
    cosine = identities.get("match_cosine") or {}
    parts = [f'<p>Matched to {h.esc(identities["previous_version"])} by decoder cosine (Hungarian assignment, '
             f'threshold {identities["threshold"]}): <strong>{identities["kept"]} kept</strong>'
             + (f' (mean cosine {cosine.get("mean")}, lowest {cosine.get("min")})' if cosine else "")
             + f', {identities["born"]} born, {identities["lost"]} lost.'
             + (f' {h.esc(identities["note"])}' if identities.get("note") else "") + "</p>"]
    rows = [(f'{k["id"]}' + (f' ({k["name"]})' if k.get("name") else ""), "kept",
             f'{k["previous_latent"]} → {k["latent"]}', k["cosine"]) for k in identities.get("kept_listed", [])]
    rows += [(f'{b["id"]}', "born", f'→ {b["latent"]}', "") for b in identities.get("born_listed", [])]
    rows += [(f'{lost["id"]}' + (f' ({lost["name"]})' if lost.get("name") else ""), "lost",
              f'{lost["previous_latent"]} →', "") for lost in identities.get("lost_listed", [])]
    if rows:
        parts.append(h.table(["neuron", "", "latent last night → tonight", "match cosine"], rows))
    return "".join(parts)
