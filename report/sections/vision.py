"""Report section of the ``vision`` stage: loss curves (I-JEPA and distillation), health
figures, collapse warning, and what was replayed from each earlier day."""
from __future__ import annotations

from report import html as h


def render(summary: dict, ctx) -> str | None:
    """HTML fragment from ``summary["vision"]`` and ``summary["metrics"]["vision"]``."""
    result = summary.get("vision") or {}
    m = (summary.get("metrics") or {}).get("vision") or {}
    if not result:
        return None
    if not result.get("trained"):
        return '<p class="muted">No frames today: the vision encoder was not trained.</p>'
    parts = []
    if m.get("collapse_warning"):
        parts.append(f'<p class="status failed">Warning: the embeddings may be collapsing: effective '
                     f'rank {m["effective_rank"]} is under {m["rank_floor"]} '
                     f'({h.esc(ctx.cfg.models.jepa.rank_warn_share)} of the rank they could reach).</p>')
    parts.append(h.line_chart({"loss": m.get("loss_curve", [])}, title="I-JEPA training loss",
                              y_label="smooth L1"))
    distill = m.get("distill_loss") or {}
    if distill.get("curve"):
        parts.append(h.line_chart({"distill": distill["curve"]}, title="Distillation from last night's encoder",
                                  y_label="2 - 2 cos"))
    trained, random = m.get("same_source_retrieval"), m.get("same_source_retrieval_random")
    rows = [
        ("model version", result.get("model_version")),
        ("continued from", result.get("resumed_from") or result.get("restart_reason") or "scratch (first night)"),
        ("frames embedded", f'{result.get("embedded")} of {result.get("frames")}'),
        ("clips", result.get("clips")),
        ("replay frames from earlier days", replay_line(result.get("replay_frames"), result.get("replay"))),
        ("distillation (CaSSLe)", distill_line(distill)),
        ("steps tonight / in all", f'{m.get("steps")} / {m.get("global_step")}'),
        ("steps skipped (gradient not finite)", m.get("skipped_steps", 0)),
        ("final loss", m.get("final_loss")),
        ("training speed", f'{m.get("images_per_second")} images/s'),
        ("torch.compile", _compile_state(m)),
        ("training time", h.seconds(m.get("train_seconds"))),
        ("embedding std (unit vectors)", m.get("embedding_std")),
        ("effective rank", f'{m.get("effective_rank")} of dim {m.get("dim")} '
                           f'(random encoder {m.get("random_effective_rank")})'),
        ("same-clip retrieval, held-out frames", f'{trained} (random encoder {random}, '
                                                 f'{m.get("heldout_frames")} queries)'),
    ]
    parts.append(h.table(["", ""], rows))
    per_day = (result.get("replay") or {}).get("per_day") or {}
    if per_day:
        parts.append(h.table(["earlier day", "frames replayed"], sorted(per_day.items())))
    failed = result.get("failed") or []
    if failed:
        parts.append(f"<p>{len(failed)} frame(s) could not be read:</p>")
        parts.append(h.table(["frame", "reason"], [(f["path"], f["reason"]) for f in failed[:50]]))
    return "".join(parts)


def _compile_state(metrics: dict) -> str:
    if metrics.get("compile_fallback"):
        return f'given up for eager mode at {metrics["compile_fallback"]}'
    return "on" if metrics.get("compiled") else "off (CPU, or models.jepa.compile: false)"


def distill_line(distill: dict) -> str:
    """``final 0.123 (weight 1.0)``, or ``off: why``: one row of a stage's facts."""
    if not distill:
        return "-"
    if distill.get("off"):
        return f'off: {distill["off"]}'
    return f'final loss {distill.get("final")} (weight {distill.get("weight")})'


def replay_line(count, replay: dict | None) -> str:
    """``240 from 3 day(s)``, with how many keepsakes stood in and how many files were gone."""
    replay = replay or {}
    text = f'{count or 0} from {len(replay.get("days") or [])} day(s)'
    if replay.get("from_keepsakes"):
        text += f', {replay["from_keepsakes"]} of them keepsakes'
    if replay.get("missing"):
        text += f', {replay["missing"]} gone'
    return text
