"""Small figures as plain SVG text: drawn at once in any browser, no chart library to load.

The live pages (LiNeS, Merge lab) redraw the per-block scale curve on every slider move and are the
pages a shared link opens. A Plotly figure there costs its 4.7 MB bundle on a fresh tab (measured
+1.2-1.7 s before the page is complete on 2 cores) and a re-render competing with the forward pass
on every move; this SVG is a few kB and renders in the same frame. Same colours as every other
figure (core.plots.style). Interactive figures (hover, zoom, selection) stay Plotly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

from ..layers import TOWER_LABELS
from .merge import KIND_COLOURS
from .style import COLORWAY, GRID


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """About `n` round tick values covering [lo, hi]."""
    span = max(hi - lo, 1e-9)
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def block_scale_svg(
    curves: Mapping[str, Sequence[float]],
    outside: Mapping[str, float] | None = None,
    title: str = "Per-block scale λ(ℓ)",
    tower: str | None = None,
    *,
    width: int = 220,
    height: int = 170,
) -> str:
    """Per-block scale curves as SVG: block ℓ = 0..L-1 on x, λ(ℓ) on y (from 0), one line with markers
    per curve and a dotted line for the scale outside the blocks. Same arguments and meaning as
    `core.plots.merge.block_scale_curve` (the interactive Plotly version)."""
    left, right, top, bottom = 34, 8, 36, 32
    pw, ph = width - left - right, height - top - bottom
    values = [float(v) for s in curves.values() for v in s] + [float(v) for v in (outside or {}).values()]
    y_hi = max([1.0, *values]) if values else 1.0
    y_hi = _ticks(0.0, y_hi)[-1] if _ticks(0.0, y_hi)[-1] >= y_hi else y_hi
    n = max((len(s) for s in curves.values()), default=1)

    def x(i: float) -> float:
        return left + (pw * i / (n - 1) if n > 1 else pw / 2)

    def y(v: float) -> float:
        return top + ph * (1 - v / y_hi)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" style="max-width:{round(width * 1.25)}px" '
        f'role="img" aria-label="{escape(title)}" font-family="sans-serif" font-size="12">',
        f'<text x="4" y="15" font-size="13" fill="#333">{escape(title)}</text>',
    ]
    for t in _ticks(0.0, y_hi, 3):
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="{GRID}"/>')
        out.append(f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end" fill="#555">{t:g}</text>')
    step = max(1, math.ceil(n / 8))
    for i in range(0, n, step):
        out.append(f'<text x="{x(i):.1f}" y="{top + ph + 14}" text-anchor="middle" fill="#555">{i}</text>')
    xtitle = "block ℓ" if tower is None else f"block ℓ of the {TOWER_LABELS.get(tower, tower)}"
    out.append(
        f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle" fill="#333">{escape(xtitle)}</text>'
    )
    out.append(
        f'<text x="12" y="{top + ph / 2:.1f}" text-anchor="middle" fill="#333" '
        f'transform="rotate(-90 12 {top + ph / 2:.1f})">scale λ(ℓ)</text>'
    )
    legend_x = left
    for k, (label, scales) in enumerate(curves.items()):
        colour = KIND_COLOURS.get(label, COLORWAY[k % len(COLORWAY)])
        pts = " ".join(f"{x(i):.1f},{y(float(v)):.1f}" for i, v in enumerate(scales))
        if outside and label in outside:
            yo = y(float(outside[label]))
            out.append(
                f'<line x1="{left}" x2="{left + pw}" y1="{yo:.1f}" y2="{yo:.1f}" stroke="{colour}" '
                f'stroke-dasharray="2 3" stroke-width="1"><title>{escape(label)}: outside blocks '
                f"{float(outside[label]):.3f}</title></line>"
            )
        data = ",".join(f"{float(v):.6g}" for v in scales)  # the values, for tests and scripts to read back
        out.append(
            f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2" '
            f'data-label="{escape(label)}" data-y="[{data}]"/>'
        )
        for i, v in enumerate(scales):
            out.append(
                f'<circle cx="{x(i):.1f}" cy="{y(float(v)):.1f}" r="3" fill="{colour}">'
                f"<title>block {i}: λ = {float(v):.3f}</title></circle>"
            )
        out.append(f'<text x="{legend_x + 80 * k}" y="{top - 10}" fill="{colour}">— {escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def svg_curves(svg: str) -> dict[str, list[float]]:
    """{label: values} of the curves in an SVG from `block_scale_svg` (what the figure shows, read back)."""
    import json
    import xml.etree.ElementTree as ET

    root = ET.fromstring(svg)
    return {
        p.get("data-label"): json.loads(p.get("data-y"))
        for p in root.iter("{http://www.w3.org/2000/svg}polyline")
        if p.get("data-y") is not None
    }
