"""Report section of the ``inpaint`` stage: fragments completed in the encoder's token space,
and how well memories compressed by PCA keep their nearest neighbours."""
from __future__ import annotations

from report import html as h

LABELS = {"visible": "the fragment's visible tokens (as it is)", "inpainted": "the inpainted whole grid",
          "clean": "the clean frame (the bound)"}


def render(summary: dict, ctx) -> str | None:
    """Top-1/top-5 clip for held-out block fragments three ways, then the PCA neighbour table."""
    result = summary.get("inpaint")
    metrics = (summary.get("metrics") or {}).get("inpaint") or {}
    if not result:
        return None
    if not result.get("trained"):
        return f'<p class="muted">{h.esc(result.get("note") or "not trained tonight")}</p>'
    found = metrics.get("recall") or {}
    parts = [f'<p>{metrics.get("queries")} fragments of {metrics.get("heldout_frames")} held-out frames '
             f'({metrics.get("views")} each), each keeping a block of {metrics.get("visible_patches")} of the '
             f'{metrics.get("patches")} patches, searched among {metrics.get("clips")} clips '
             f'(chance {metrics.get("chance_top1")}): the share whose own clip comes first, among the five '
             f'nearest, and the cosine to the clean frame.</p>',
             h.table(["query", "top 1", "top 5", "cosine to the clean frame"],
                     [(label, found[k]["top1"], found[k]["top5"], found[k]["cosine"])
                      for k, label in LABELS.items() if k in found]),
             h.table(["", ""], [
                 ("inpainted / as it is, top 1", f'{metrics.get("ratio_top1")}x'),
                 ("training", f'{metrics.get("steps")} steps on {metrics.get("train_frames")} frames, '
                              f'{h.seconds(metrics.get("train_seconds"))}; loss {metrics.get("loss_first")} -> '
                              f'{metrics.get("loss_last")}'),
                 ("continued from", result.get("resumed_from") or result.get("restart_reason") or "fresh weights"),
             ])]
    rows = [(space, f'{pca["vectors"]} x {pca["dim"]}', pca["k"],
             ", ".join(f'{s["dim"]}: {s["agreement"]} ({s["variance_kept"]} of the variance)' for s in pca["sizes"]))
            for space, pca in (metrics.get("pca") or {}).items()]
    if rows:
        parts.append("<p>Memories stored compressed: each space's vectors by PCA to each size, and the share of "
                     "every vector's nearest neighbours still found (1: the same neighbours).</p>")
        parts.append(h.table(["space", "vectors", "neighbours", "kept at each size"], rows))
    if metrics.get("loss_curve"):
        parts.append(h.line_chart({"inpainter loss": metrics["loss_curve"]}, title="Inpainter training",
                                  y_label="loss"))
    return "".join(parts)
