"""Report section of the audio stage (CPC): a thin renderer of summary.json."""
from __future__ import annotations

from report import html as h
from report.sections.vision import distill_line, replay_line


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(summary: dict, ctx) -> str | None:
    """CPC loss and per-step accuracy (held out, with chance), the curve, what was trained on."""
    result = summary.get("audio")
    metrics = (summary.get("metrics") or {}).get("audio") or {}
    if not result and not metrics:
        return None
    result = result or {}
    parts = []
    if result.get("note"):
        parts.append(f'<p class="muted">{h.esc(result["note"])}</p>')
    replay = result.get("replay") or {}
    facts = [("segments today", result.get("segments")), ("embedded", result.get("embedded")),
             ("left out (unreadable)", len(result.get("skipped") or [])),
             ("replayed from earlier days", replay_line(replay.get("segments"), replay)),
             ("distillation (CaSSLe)", distill_line(metrics.get("distill_loss") or {})),
             ("continued from", result.get("resumed_from") or result.get("restart_reason") or "a fresh model"),
             ("steps tonight", result.get("steps")),
             ("negatives", f"{result.get('n_negatives')} per prediction, from {result.get('negatives')}"),
             ("model version", result.get("model_version"))]
    if metrics.get("train_seconds") is not None:
        facts.append(("training", f"{h.seconds(metrics['train_seconds'])}, "
                                  f"{metrics.get('audio_seconds_per_second')} s of audio per second"))
    parts.append(h.table(["", ""], facts))
    if metrics.get("accuracy_per_step"):
        parts.append(f"<p>Evaluated on {h.esc(metrics.get('evaluated_on'))}: InfoNCE loss "
                     f"{_fmt(metrics.get('loss'))} (chance {_fmt(metrics.get('chance_loss'))}).</p>")
        chance = metrics.get("chance_accuracy")
        rows = [(k + 1, _fmt(acc), _fmt(loss), _fmt(chance))
                for k, (acc, loss) in enumerate(zip(metrics["accuracy_per_step"], metrics["loss_per_step"]))]
        parts.append(h.table(["step ahead", "accuracy", "loss", "chance accuracy"], rows))
    if replay.get("per_day"):
        parts.append(h.table(["earlier day", "segments replayed"], sorted(replay["per_day"].items())))
    if metrics.get("train_loss_curve"):
        parts.append(h.line_chart({"train loss": metrics["train_loss_curve"]}, title="CPC training loss",
                                  y_label="InfoNCE"))
    if (metrics.get("distill_loss") or {}).get("curve"):
        parts.append(h.line_chart({"distill": metrics["distill_loss"]["curve"]},
                                  title="Distillation from last night's model", y_label="2 - 2 cos"))
    for item in (result.get("skipped") or [])[: ctx.cfg.report.max_listed_files]:
        parts.append(f'<p class="muted">left out {h.esc(item["file"])}: {h.esc(item["reason"])}</p>')
    return "".join(parts)
