"""Small helpers stages use to build their report sections: tables, inline SVG curves, images.

Everything is inlined (data URIs, inline SVG and CSS) so the page opens offline and makes
no network request.
"""
from __future__ import annotations

import base64
import html
import mimetypes
from pathlib import Path
from typing import Iterable, Sequence


def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def table(headers: Sequence[str], rows: Iterable[Sequence], *, cls: str = "") -> str:
    """An HTML table; cell values are escaped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    thead = f"<thead><tr>{head}</tr></thead>" if headers else ""
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{esc(cls)}">{thead}<tbody>{body}</tbody></table>'


def image_data_uri(path: Path) -> str:
    """``data:`` URI of an image file, for an ``<img src>`` that needs no file beside the page."""
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def line_chart(series: dict[str, Sequence[float]], *, width: int = 560, height: int = 180,
               title: str = "", y_label: str = "") -> str:
    """An inline SVG line chart of one or more series against their index (e.g. a loss curve)."""
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
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="chart">']
    if title:
        parts.append(f'<text x="{pad_l}" y="14" class="chart-title">{esc(title)}</text>')
    parts.append(f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="none" stroke="#ccc"/>')
    for frac in (0.0, 0.5, 1.0):
        y = pad_t + h * (1 - frac)
        parts.append(f'<text x="{pad_l - 4}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
                     f'{lo + (hi - lo) * frac:.3g}</text>')
    parts.append(f'<text x="{pad_l}" y="{height - 6}" class="tick">0</text>'
                 f'<text x="{pad_l + w}" y="{height - 6}" text-anchor="end" class="tick">{n_max - 1}</text>')
    for i, (name, vals) in enumerate(series.items()):
        step = w / max(1, n_max - 1)
        pts = " ".join(f"{pad_l + j * step:.1f},{pad_t + h * (1 - (v - lo) / (hi - lo)):.1f}"
                       for j, v in enumerate(vals))
        color = colors[i % len(colors)]
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>')
        parts.append(f'<text x="{pad_l + w - 4}" y="{pad_t + 14 + 14 * i}" text-anchor="end" '
                     f'fill="{color}" class="tick">{esc(name)}</text>')
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
