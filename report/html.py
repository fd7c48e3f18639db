"""Small helpers stages use to build their report sections: tables, inline SVG curves, images.

Everything is inlined (data URIs, inline SVG and CSS) so the page opens offline and makes
no network request.
"""
from __future__ import annotations

import base64
import html
import mimetypes
from collections.abc import Iterable, Sequence
from pathlib import Path

from core.vault import read_file


def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def table(headers: Sequence[str], rows: Iterable[Sequence], *, cls: str = "") -> str:
    """An HTML table; cell values are escaped. It scrolls sideways inside its own box on a
    narrow screen, so the page itself never does."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    thead = f"<thead><tr>{head}</tr></thead>" if headers else ""
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="table-wrap"><table class="{esc(cls)}">{thead}<tbody>{body}</tbody></table></div>'


def image_data_uri(path: Path) -> str:
    """``data:`` URI of an image file, for an ``<img src>`` that needs no file beside the page
    (decrypted when the file is sealed: the page itself is sealed with the memory)."""
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(read_file(path)).decode()}"


def line_chart(series: dict[str, Sequence[float]], *, width: int = 560, height: int = 180,
               title: str = "", y_label: str = "", faded: Sequence[str] = ()) -> str:
    """An inline SVG line chart of one or more series against their index (e.g. a loss curve).

    Args:
        series: name -> values, drawn in order; each against its own index 0, 1, ...
        width, height: the drawing's size in px; on a narrower screen it shrinks to fit.
        title: a line above the plot.
        y_label: the vertical axis's name.
        faded: names in ``series`` drawn thin and grey behind the others (earlier nights, say),
            later ones darker, under a single legend line instead of one per series.
    Returns:
        ``<svg>`` markup (a ``<p>`` saying "no data" when every series is empty).
    """
    series = {k: [float(v) for v in vals] for k, vals in series.items() if len(vals)}
    if not series:
        return '<p class="muted">no data</p>'
    pad_l, pad_r, pad_t, pad_b = 48, 10, 22 if title else 8, 22
    lo = min(min(v) for v in series.values())
    hi = max(max(v) for v in series.values())
    if hi == lo:
        hi, lo = hi + 1e-9 + abs(hi) * 0.05, lo - 1e-9 - abs(lo) * 0.05
    n_max = max(len(v) for v in series.values())
    colors = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280"]
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    # viewBox + CSS width 100%: the chart scales down on a phone instead of widening the page.
    parts = [(f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" class="chart" '
              f'style="max-width: {width}px" role="img" aria-label="{esc(title or y_label)}">')]
    if title:
        parts.append(f'<text x="{pad_l}" y="14" class="chart-title">{esc(title)}</text>')
    parts.append(f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="none" stroke="#ccc"/>')
    for frac in (0.0, 0.5, 1.0):
        y = pad_t + h * (1 - frac)
        parts.append(f'<text x="{pad_l - 4}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
                     f'{lo + (hi - lo) * frac:.3g}</text>')
    parts.append(f'<text x="{pad_l}" y="{height - 6}" class="tick">0</text>'
                 f'<text x="{pad_l + w}" y="{height - 6}" text-anchor="end" class="tick">{n_max - 1}</text>')
    step = w / max(1, n_max - 1)

    def points(vals: list[float]) -> str:
        return " ".join(f"{pad_l + j * step:.1f},{pad_t + h * (1 - (v - lo) / (hi - lo)):.1f}"
                        for j, v in enumerate(vals))

    grey = [name for name in series if name in set(faded)]
    for i, name in enumerate(grey):  # oldest first, so the most recent is drawn last and darkest
        opacity = 0.25 + 0.5 * (i + 1) / len(grey)
        parts.append(f'<polyline fill="none" stroke="#718096" stroke-opacity="{opacity:.2f}" stroke-width="1" '
                     f'points="{points(series[name])}"><title>{esc(name)}</title></polyline>')
    bold = [name for name in series if name not in set(faded)]
    for i, name in enumerate(bold):
        color = colors[i % len(colors)]
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{points(series[name])}"/>')
        parts.append(f'<text x="{pad_l + w - 4}" y="{pad_t + 14 + 14 * i}" text-anchor="end" '
                     f'fill="{color}" class="tick">{esc(name)}</text>')
    if grey:
        label = grey[0] if len(grey) == 1 else f"grey: {len(grey)} earlier nights, {grey[0]} to {grey[-1]}"
        parts.append(f'<text x="{pad_l + w - 4}" y="{pad_t + 14 + 14 * len(bold)}" text-anchor="end" '
                     f'fill="#718096" class="tick">{esc(label)}</text>')
    if y_label:
        parts.append(f'<text x="12" y="{pad_t + h / 2}" class="tick" '
                     f'transform="rotate(-90 12 {pad_t + h / 2})">{esc(y_label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f} s"
    minutes, sec = divmod(value, 60)
    if minutes < 60:
        return f"{int(minutes)} min {sec:02.0f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes):02d} min"


def size(n_bytes: float | None) -> str:
    """``1.2 MB``: a byte count in decimal units."""
    if n_bytes is None:
        return "-"
    value = float(n_bytes)
    for unit in ("B", "kB", "MB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
