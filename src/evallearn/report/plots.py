"""Plots as inline SVG text: no plotting library, no script, nothing fetched, so a page that holds
them opens offline and a Markdown file can link the same SVG files.

* :func:`scatter_svg` — erasure (x) against retention (y), one point per technique setting, each
  with its 95 % interval as whiskers on both axes; the base model as a hollow point.
* :func:`bars_svg` — grouped bars (one group per probe, one bar per technique setting) with
  whiskers for the intervals and a dashed line at each group's chance floor.

Every plot is an ``<svg class="plot ...">`` with ``data-`` attributes saying what it holds (the
rendered-page test reads them), a ``<title>`` per mark for hover text, and a legend.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

#: colour per series (Okabe–Ito, readable by colour-blind readers), cycled
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")

_FONT = 'font-family="sans-serif" font-size="11"'


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [lo, hi] (steps of 1, 2 or 5 × 10^k)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw * 0.75)
    first = float(math.ceil(lo / step - 1e-9) * step)
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _fmt_tick(v: float) -> str:
    return f"{v:.10g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def axis_range(values: list[float], rate: bool) -> tuple[float, float]:
    """The plotted range: [0, 1] for rates that all lie in it, else the data padded by 8 %."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if rate and all(0.0 <= v <= 1.0 for v in vals):
        return 0.0, 1.0
    if not vals:
        return 0.0, 1.0
    lo, hi = min(vals), max(vals)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.08 or 1.0
    return lo - pad, hi + pad


@dataclass
class Point:
    """One technique setting on the scatter: x and y with their 95 % intervals (None: none)."""

    label: str
    x: float
    y: float
    x_lo: float | None = None
    x_hi: float | None = None
    y_lo: float | None = None
    y_hi: float | None = None
    colour: str = PALETTE[0]
    #: drawn hollow (the base model, before erasure)
    hollow: bool = False


def _legend(items: list[tuple[str, str, bool]], x: float, y: float) -> tuple[list[str], float]:
    """Legend rows (marker, label) from (x, y) down; returns the SVG parts and the bottom y."""
    parts = []
    for i, (label, col, hollow) in enumerate(items):
        cy = y + i * 16
        fill = "white" if hollow else col
        parts.append(f'<circle cx="{x + 5:.1f}" cy="{cy:.1f}" r="4.5" fill="{fill}" stroke="{col}" '
                     f'stroke-width="1.5"/><text x="{x + 15:.1f}" y="{cy + 4:.1f}" {_FONT}>{_e(label)}</text>')
    return parts, y + len(items) * 16


def scatter_svg(points: list[Point], x_label: str, y_label: str, title: str, *, x_rate: bool = True,
                y_rate: bool = True, width: int = 460, height: int = 340, plot_id: str = "") -> str:
    """Erasure vs retention: x and y with whiskers for their intervals, labelled in a legend."""
    left, right, top, bottom = 58, 16, 28, 44
    pw, ph = width - left - right, height - top - bottom
    xs = [v for p in points for v in (p.x, p.x_lo, p.x_hi) if v is not None]
    ys = [v for p in points for v in (p.y, p.y_lo, p.y_hi) if v is not None]
    x0, x1 = axis_range(xs, x_rate)
    y0, y1 = axis_range(ys, y_rate)

    def sx(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * pw

    def sy(v: float) -> float:
        return top + ph - (v - y0) / (y1 - y0) * ph

    parts = [f'<text x="{width / 2:.0f}" y="16" text-anchor="middle" {_FONT} font-weight="bold">{_e(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>']
    for t in nice_ticks(x0, x1):
        parts.append(f'<line x1="{sx(t):.1f}" y1="{top}" x2="{sx(t):.1f}" y2="{top + ph}" stroke="#eee"/>'
                     f'<text x="{sx(t):.1f}" y="{top + ph + 14}" text-anchor="middle" {_FONT}>{_fmt_tick(t)}</text>')
    for t in nice_ticks(y0, y1):
        parts.append(f'<line x1="{left}" y1="{sy(t):.1f}" x2="{left + pw}" y2="{sy(t):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 4}" y="{sy(t) + 4:.1f}" text-anchor="end" {_FONT}>{_fmt_tick(t)}</text>')
    parts.append(f'<text x="{left + pw / 2:.0f}" y="{height - 8}" text-anchor="middle" {_FONT}>{_e(x_label)}</text>')
    parts.append(f'<text transform="translate(14,{top + ph / 2:.0f}) rotate(-90)" text-anchor="middle" '
                 f'{_FONT}>{_e(y_label)}</text>')
    for p in points:
        cx, cy = sx(p.x), sy(p.y)
        mark = [f'<g class="point" data-label="{_e(p.label)}"><title>{_e(p.label)}: x {p.x:.4g}, y {p.y:.4g}</title>']
        if p.x_lo is not None and p.x_hi is not None:
            mark.append(f'<line x1="{sx(p.x_lo):.1f}" y1="{cy:.1f}" x2="{sx(p.x_hi):.1f}" y2="{cy:.1f}" '
                        f'stroke="{p.colour}" stroke-width="1.2"/>')
        if p.y_lo is not None and p.y_hi is not None:
            mark.append(f'<line x1="{cx:.1f}" y1="{sy(p.y_lo):.1f}" x2="{cx:.1f}" y2="{sy(p.y_hi):.1f}" '
                        f'stroke="{p.colour}" stroke-width="1.2"/>')
        fill = "white" if p.hollow else p.colour
        mark.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{fill}" stroke="{p.colour}" '
                    f'stroke-width="1.5"/></g>')
        parts.append("".join(mark))
    legend, bottom_y = _legend([(p.label, p.colour, p.hollow) for p in points], left, height + 6)
    total = int(bottom_y + 6)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="plot scatter" id="{_e(plot_id)}" '
            f'data-points="{len(points)}" width="{width}" height="{total}" viewBox="0 0 {width} {total}" '
            f'role="img" aria-label="{_e(title)}">' + "".join(parts + legend) + "</svg>")


@dataclass
class Bar:
    value: float | None
    lo: float | None = None
    hi: float | None = None


def bars_svg(groups: list[str], series: list[tuple[str, str]], values: dict[tuple[int, int], Bar],
             chance: dict[int, float | None], title: str, y_label: str, *, rate: bool = True,
             width: int = 0, height: int = 300, plot_id: str = "") -> str:
    """Grouped bars: ``values[(series index, group index)]``; whiskers for the intervals; a dashed
    line at ``chance[group]`` where there is one. A missing bar is left out (not drawn as 0)."""
    left, right, top, bottom = 58, 16, 28, 52
    n_series = max(len(series), 1)
    group_w = max(24 * n_series + 16, 70)
    width = width or max(left + right + group_w * max(len(groups), 1), 380)
    pw, ph = width - left - right, height - top - bottom
    vals = [v for b in values.values() for v in (b.value, b.lo, b.hi) if v is not None]
    vals += [c for c in chance.values() if c is not None]
    y0, y1 = axis_range(vals + [0.0], rate)
    y0 = min(y0, 0.0)

    def sy(v: float) -> float:
        return top + ph - (v - y0) / (y1 - y0) * ph

    parts = [f'<text x="{width / 2:.0f}" y="16" text-anchor="middle" {_FONT} font-weight="bold">{_e(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>']
    for t in nice_ticks(y0, y1):
        parts.append(f'<line x1="{left}" y1="{sy(t):.1f}" x2="{left + pw}" y2="{sy(t):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 4}" y="{sy(t) + 4:.1f}" text-anchor="end" {_FONT}>{_fmt_tick(t)}</text>')
    parts.append(f'<text transform="translate(14,{top + ph / 2:.0f}) rotate(-90)" text-anchor="middle" '
                 f'{_FONT}>{_e(y_label)}</text>')
    gw = pw / max(len(groups), 1)
    bw = min(22.0, (gw - 12) / n_series)
    drawn = 0
    for g, name in enumerate(groups):
        gx = left + g * gw
        parts.append(f'<text x="{gx + gw / 2:.1f}" y="{top + ph + 14}" text-anchor="middle" {_FONT}>{_e(name)}</text>')
        start = gx + (gw - bw * n_series) / 2
        for s, (label, col) in enumerate(series):
            bar = values.get((s, g))
            if bar is None or bar.value is None or not math.isfinite(bar.value):
                continue
            x = start + s * bw
            y, base = sy(bar.value), sy(max(y0, 0.0))
            mark = [f'<g class="bar" data-series="{_e(label)}" data-group="{_e(name)}">'
                    f'<title>{_e(label)} · {_e(name)}: {bar.value:.4g}</title>'
                    f'<rect x="{x + 1:.1f}" y="{min(y, base):.1f}" width="{bw - 2:.1f}" '
                    f'height="{abs(base - y):.1f}" fill="{col}"/>']
            if bar.lo is not None and bar.hi is not None:
                cx = x + bw / 2
                mark.append(f'<line x1="{cx:.1f}" y1="{sy(bar.lo):.1f}" x2="{cx:.1f}" y2="{sy(bar.hi):.1f}" '
                            f'stroke="#333" stroke-width="1.2"/>')
            parts.append("".join(mark) + "</g>")
            drawn += 1
        c = chance.get(g)
        if c is not None and math.isfinite(c):
            parts.append(f'<line class="chance" x1="{gx + 3:.1f}" y1="{sy(c):.1f}" x2="{gx + gw - 3:.1f}" '
                         f'y2="{sy(c):.1f}" stroke="#555" stroke-dasharray="4 3"><title>chance {c:.3g}</title>'
                         f'</line>')
    legend, bottom_y = _legend([(label, col, False) for label, col in series], left, height + 6)
    parts.append(f'<text x="{left}" y="{bottom_y + 10:.0f}" {_FONT} fill="#555">dashed: the scoring rule\'s chance '
                 f'floor · whiskers: 95% CI</text>')
    total = int(bottom_y + 18)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="plot bars" id="{_e(plot_id)}" data-bars="{drawn}" '
            f'width="{width}" height="{total}" viewBox="0 0 {width} {total}" role="img" aria-label="{_e(title)}">'
            + "".join(parts + legend) + "</svg>")
