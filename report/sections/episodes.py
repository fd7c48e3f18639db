"""Report section of the ``episodes`` stage: the day as a strip of episodes, each episode with
its times, thumbnails, loudness and recordings, then the highlights with their reasons.

Everything inline: the strip and the sparklines are SVG with a ``viewBox`` at 100% width
(readable on a phone), thumbnails are JPEG data URIs shrunk to :data:`THUMB_WIDTH` pixels
in memory, so a day of many recordings keeps the page small.
"""
from __future__ import annotations

import base64
import datetime as dt
import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from core.sealed import SealedFileError
from core.vault import open_file
from report import html as h

THUMB_WIDTH = 96
COLOURS = ("#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280", "#2c7a7b", "#975a16")
STRIP_W, BAND_H, REC_H = 1000, 34, 10
SPARK_MIN_DB = 6.0  # the sparkline spans at least this many dB


def thumbnail(path: Path) -> str | None:
    """A small JPEG data URI of an image (``None`` when the file is gone or unreadable); a
    sealed one is decrypted in memory."""
    try:
        with open_file(path) as stored, Image.open(stored) as img:
            img = img.convert("RGB")
            img.thumbnail((THUMB_WIDTH, THUMB_WIDTH * 4))
            out = io.BytesIO()
            img.save(out, "JPEG", quality=70)
    except (OSError, UnidentifiedImageError, SealedFileError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def _img(ctx, rel: str | None, alt: str) -> str:
    uri = thumbnail(ctx.paths.root / rel) if rel else None
    return f'<img src="{uri}" alt="{h.esc(alt)}" width="{THUMB_WIDTH}" loading="lazy">' if uri else ""


def _clock(iso: str | None) -> str | None:
    return dt.datetime.fromisoformat(iso).strftime("%H:%M:%S") if iso else None


def when(item: dict, path_key: str = "recordings") -> str:
    """``09:00:00–09:00:09`` from wall times, else the offsets into the recording."""
    start, end = _clock(item.get("start")), _clock(item.get("end"))
    if start and end:
        return f"{start}–{end}"
    source = item[path_key][0] if isinstance(item.get(path_key), list) else item.get(path_key)
    return f"{Path(source or '?').name} +{item.get('start_s', 0):.0f}–{item.get('end_s', 0):.0f} s"


def _positions(result: dict) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """x extents (0..1) of each episode and each recording: by wall time when every one has
    it, else by clip count (the clips of the day side by side)."""
    episodes, recordings = result["episodes"], result.get("recordings") or []
    items = episodes + recordings
    if items and all(i.get("start") and i.get("end") for i in items):
        t0 = min(dt.datetime.fromisoformat(i["start"]) for i in items)
        t1 = max(dt.datetime.fromisoformat(i["end"]) for i in items)
        span = max((t1 - t0).total_seconds(), 1e-9)

        def x(i):
            return ((dt.datetime.fromisoformat(i["start"]) - t0).total_seconds() / span,
                    (dt.datetime.fromisoformat(i["end"]) - t0).total_seconds() / span)
        return [x(e) for e in episodes], [x(r) for r in recordings]
    n = max(1, result["clips"])
    return ([(e["first"] / n, (e["first"] + e["clips"]) / n) for e in episodes],
            [(r["first"] / n, (r["first"] + r["clips"]) / n) for r in recordings])


def timeline_strip(result: dict) -> str:
    """The whole day: a coloured band per episode, and under it a line per recording."""
    ep_x, rec_x = _positions(result)
    height = BAND_H + 6 + REC_H + 2
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" class="episodes-timeline" viewBox="0 0 {STRIP_W} {height}" '
             f'width="100%" height="{height}" preserveAspectRatio="none" role="img" aria-label="episodes of the day">')]
    for k, (episode, (a, b)) in enumerate(zip(result["episodes"], ep_x)):
        colour = COLOURS[k % len(COLOURS)]
        title = f"episode {k + 1}: {when(episode)}, {_clips(episode['clips'])}"
        parts.append(f'<rect x="{a * STRIP_W:.1f}" y="0" width="{max(1.0, (b - a) * STRIP_W):.1f}" height="{BAND_H}" '
                     f'fill="{colour}"><title>{h.esc(title)}</title></rect>')
    for k, (recording, (a, b)) in enumerate(zip(result.get("recordings") or [], rec_x)):
        parts.append(f'<rect x="{a * STRIP_W:.1f}" y="{BAND_H + 6}" width="{max(1.0, (b - a) * STRIP_W - 2):.1f}" '
                     f'height="{REC_H}" fill="{"#718096" if k % 2 else "#a0aec0"}"><title>'
                     f'{h.esc(Path(recording["path"]).name)}</title></rect>')
    parts.append("</svg>")
    return "".join(parts)


def sparkline(values: list[float | None]) -> str:
    """The loudness of each clip (dBFS) as a small inline SVG line (gaps where there was no sound)."""
    known = [v for v in values if v is not None]
    if not known:
        return '<span class="muted">no sound</span>'
    lo, hi = min(known), max(known)
    if hi - lo < SPARK_MIN_DB:  # a steady level draws flat, not its hundredths of a dB
        lo, hi = (lo + hi - SPARK_MIN_DB) / 2, (lo + hi + SPARK_MIN_DB) / 2
    w, ht = 120, 24
    step = w / max(1, len(values) - 1)
    points = " ".join(f"{i * step:.1f},{ht - 2 - (v - lo) / (hi - lo) * (ht - 4):.1f}"
                      for i, v in enumerate(values) if v is not None)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {ht}" width="120" height="{ht}" '
            f'role="img" aria-label="loudness {min(known):.0f} to {max(known):.0f} dBFS">'
            f'<polyline fill="none" stroke="#2b6cb0" stroke-width="1.5" points="{points}"/></svg>'
            f' <span class="muted">{min(known):.0f} to {max(known):.0f} dBFS</span>')


def _episode(ctx, k: int, episode: dict) -> str:
    colour = COLOURS[k % len(COLOURS)]
    thumbs = "".join(_img(ctx, rel, f"episode {k + 1}") for rel in episode.get("thumbnails") or [])
    recordings = ", ".join(Path(r).name for r in episode["recordings"])
    return (f'<div class="episode" style="border-left:6px solid {colour};padding-left:8px;margin:10px 0">'
            f'<p><b>Episode {k + 1}</b> {h.esc(when(episode))} &middot; {_clips(episode["clips"])} &middot; '
            f'{h.esc(recordings)}</p>'
            f'<div class="thumbs" style="display:flex;flex-wrap:wrap;gap:4px">{thumbs}</div>'
            f'<p>loudness {sparkline(episode.get("loudness") or [])}</p></div>')


def _highlight(ctx, rank: int, item: dict) -> str:
    moment = _clock(item.get("when")) or f"{Path(item['source_path']).name} +{item['start_s']:.0f} s"
    return (f'<li style="margin:8px 0">{_img(ctx, item.get("frame_path"), f"highlight {rank}")}'
            f'<div><b>{h.esc(moment)}</b> (clip {item["clip_id"]}): {h.esc("; ".join(item["reasons"]))}</div></li>')


def render(summary: dict, ctx) -> str | None:
    """The day's strip of episodes, each episode, then the highlights."""
    result = summary.get("episodes")
    if not result:
        return None
    if not result.get("episodes"):
        return f'<p class="muted">{h.esc("; ".join(result.get("notes") or ["no episodes"]))}</p>'
    senses = " and ".join(result.get("senses") or {}) or "nothing"
    parts = [(f"<p>{result['clips']} clips in {len(result['episodes'])} episodes: kernel change points "
             f"({h.esc(result['kernel'])} kernel, penalty {result['penalty']}) over tonight's {h.esc(senses)} "
             "vectors, in time order. Under the strip, the recordings.</p>"),
             timeline_strip(result)]
    parts += [_episode(ctx, k, e) for k, e in enumerate(result["episodes"])]
    if result.get("highlights"):
        parts.append("<h3>Highlights</h3><p>Ranked by surprise: the vision model's prediction error and the "
                     "distance to every earlier day's memories (each as a z-score against the day), and how "
                     "loud or quiet the moment was; picked to differ from each other.</p>")
        parts.append('<ol class="highlights">' + "".join(_highlight(ctx, n, item)
                                                        for n, item in enumerate(result["highlights"], 1)) + "</ol>")
    for note in result.get("notes") or []:
        parts.append(f'<p class="muted">{h.esc(note)}</p>')
    return "".join(parts)


def _clips(n: int) -> str:
    return f"{n} clip" if n == 1 else f"{n} clips"
