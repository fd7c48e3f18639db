"""Report section of the ``dream`` stage: a gallery of the night's dreams, each beside the
moments it came from (clip and time), and how often a dream shows its own clip.

The pictures are the stage's own files under ``reports/{date}/dreams/`` (the dream, the
glimpse, the source frames copied there when it ran), inlined as data URIs; each dream is a
row of small figures that wraps on a phone.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from report import html as h

DAMAGE = {"crop": "a small crop", "occlude": "a grey block", "blur": "a blur"}


def when(moment: dict) -> str:
    """``09:00:03`` on the wall clock, else the offset into the recording."""
    if moment.get("wall"):
        return dt.datetime.fromisoformat(moment["wall"]).strftime("%H:%M:%S")
    return f'{Path(moment.get("recording") or "?").name} +{moment.get("offset_s", 0):.0f} s'


# Three pictures to a row even on a phone; a long recording name wraps under its picture
# instead of widening it.
FIGURE = 'style="width: min(128px, calc(33.3% - 6px))"'


def _figure(folder: Path, file: str | None, label: str) -> str:
    path = folder / file if file else None
    if path is None or not path.is_file():
        return f'<figure {FIGURE}><figcaption>{h.esc(label)} (picture gone)</figcaption></figure>'
    return (f'<figure {FIGURE}><img src="{h.image_data_uri(path)}" alt="{h.esc(label)}" width="128" '
            f'style="width: 100%"><figcaption>{h.esc(label)}</figcaption></figure>')


def gallery(items: list[dict], folder: Path) -> str:
    """One card per dream: the dream, the glimpse it was recalled from, its source moments."""
    cards = []
    for item in items:
        figures = [_figure(folder, item.get("file"), "the dream")]
        if item.get("glimpse"):
            damage = DAMAGE.get(item.get("damage"), item.get("damage"))
            figures.append(_figure(folder, item["glimpse"], f"the glimpse ({damage})"))
        figures += [_figure(folder, s.get("file"), f'clip {s.get("clip_id")} · {when(s)}')
                    for s in item.get("sources") or []]
        cards.append(f'<div class="dream-card" style="margin: 0 0 14px"><div class="grid">{"".join(figures)}</div>'
                     f'<p class="muted" style="margin: 4px 0 0">{h.esc(item.get("caption"))}</p></div>')
    return "".join(cards)


def _share(metrics: dict, key: str) -> str:
    return f'{metrics[key + "_top1"]:.2f} ({metrics[key + "_top5"]:.2f})'


def render(summary: dict, ctx) -> str | None:
    """The gallery, the round-trip figures beside the untrained decoder and chance, the loss curve."""
    result = summary.get("dream")
    metrics = (summary.get("metrics") or {}).get("dream") or {}
    if not result:
        return None
    if result.get("backend") == "unclip" and result.get("dreams"):
        return (gallery(result["dreams"], ctx.paths.report(ctx.date))
                + f'<p class="muted">{h.esc(result.get("note"))}</p>')
    if not result.get("trained"):
        return f'<p class="muted">{h.esc(result.get("note") or "no dreams tonight")}</p>'
    parts = [gallery(result.get("dreams") or [], ctx.paths.report(ctx.date))]
    if metrics.get("budget_cut"):
        parts.append(f'<p class="status failed">Shortened: {h.esc(metrics["budget_cut"])}.</p>')
    replay = result.get("replay") or {}
    start = result.get("resumed_from") or result.get("restart_reason") or "nothing (first night)"
    rows = [
        ("decoder", (f'{result.get("model_version")}, {result.get("frames")} frames of tonight and '
                    f'{result.get("replay_frames", 0)} replayed from {len(replay.get("days") or [])} earlier day(s), '
                    f"continued from {start}")),
        ("training", (f'{metrics.get("steps")} steps, {h.seconds(metrics.get("train_seconds"))}, '
                     f'{metrics.get("images_per_second")} images/s')),
    ]
    if "roundtrip_top1" in metrics:
        rows.append(("recalls whose dream, re-embedded, finds its own clip first (in the top 5)",
                     (f'{_share(metrics, "roundtrip")} of {metrics.get("roundtrip_dreams")}; the same decoder '
                     f'untrained {_share(metrics, "untrained")}; chance {_share(metrics, "chance")} '
                     f'({metrics.get("roundtrip_clips")} clips)')))
    parts.append(h.table(["", ""], rows))
    if metrics.get("loss_curve"):
        parts.append(h.line_chart({"loss": metrics["loss_curve"]}, title="Dream decoder training", y_label="MSE (v)"))
    return "".join(parts)
