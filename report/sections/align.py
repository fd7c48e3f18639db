"""Report section of the align stage: a thin renderer of summary.json."""
from __future__ import annotations

from report import html as h


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(summary: dict, ctx) -> str | None:
    """Held-out audio->video and video->audio retrieval beside chance, and the curve."""
    result = summary.get("align")
    metrics = (summary.get("metrics") or {}).get("align") or {}
    if not result and not metrics:
        return None
    result = result or {}
    parts = []
    if result.get("note") or metrics.get("note"):
        parts.append(f'<p class="muted">{h.esc(result.get("note") or metrics.get("note"))}</p>')
    parts.append(h.table(["", ""], [
        ("clips with vision / audio / both", f"{result.get('vision_clips')} / {result.get('audio_clips')} / "
                                             f"{result.get('pairs')}"),
        ("held-out pairs measured", result.get("heldout_pairs")),
        ("continued from", result.get("resumed_from") or result.get("restart_reason") or "fresh heads"),
        ("inputs", f"{result.get('vision_version')} + {result.get('audio_version')}"),
        ("model version", result.get("model_version")),
        ("logit scale", _fmt(metrics.get("logit_scale"), 1))]))
    rows = []
    for key, label in (("audio_to_video", "audio -> video"), ("video_to_audio", "video -> audio")):
        m = metrics.get(key)
        if not m:
            continue
        c = m["chance"]
        rows.append((label, *(f"{_fmt(m[f'recall@{k}'], 2)} ({_fmt(c[f'recall@{k}'], 2)})" for k in (1, 5, 10)),
                     f"{_fmt(m['median_rank'], 1)} ({_fmt(c['median_rank'], 1)})"))
    if rows:
        parts.append("<p>Retrieval among the held-out clips; chance in brackets.</p>")
        parts.append(h.table(["direction", "recall@1", "recall@5", "recall@10", "median rank"], rows))
    if metrics.get("train_loss_curve"):
        parts.append(h.line_chart({"train loss": metrics["train_loss_curve"]}, title="Alignment loss",
                                  y_label="ClipLoss"))
    return "".join(parts)
