"""Charts as SVG drawn on the server: no script, no CDN, readable with JavaScript off.

Each chart is an <svg class="chart" data-chart=NAME> whose marks (rect, polyline, circle) carry
a <title> with the exact figure, so a pointer shows it and a test can read it. Every label comes
from the ledger (model and agent names are the client's), so everything is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from telemetry import reports
from telemetry.dashboard import Chart, Section

WIDTH, HEIGHT = 760, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 24, 12, 64
COLOURS = ("#3b6fd4", "#e08a2e", "#3aa76d", "#c0392b")
STATE_COLOURS = {"ok": "#3aa76d", "alert": "#e08a2e", "exceeded": "#c0392b"}


def display(value: Any, kind: str) -> str:
    """A figure as the pages write it; money as the `cost` command writes it."""
    if value is None or value == "":
        return "–"
    if isinstance(value, list):
        shown = [display(v, kind) for v in value]
        if kind == "ms" and all(s.endswith(" ms") for s in shown):
            return " / ".join(s.removesuffix(" ms") for s in shown) + " ms"
        return " / ".join(shown)
    if kind == "usd":
        return reports.money(Decimal(value))
    if kind == "int":
        return reports.count(int(value))
    if kind == "pct":
        return reports.pct(float(value))
    if kind == "ms":
        v = float(value)
        if v >= 10_000:
            return f"{v / 1000:,.2f} s"
        return f"{v:,.0f} ms" if v >= 100 else f"{v:,.1f} ms"
    return str(value)


def render(section: Section) -> SafeString:
    chart = section.chart
    if chart is None or not section.rows:
        return mark_safe("")
    draw: dict[str, Callable[[str, list[dict[str, Any]], Chart], str]] = {
        "bars": bars, "hbars": hbars, "lines": lines, "gauges": gauges}
    svg = draw[chart.kind](section.name, section.rows, chart)
    if len(chart.ys) > 1:  # say which colour is which
        names = {c.key: c.label for c in section.columns}
        svg = svg.replace("</svg>", "".join(
            f'<rect x="{WIDTH - RIGHT - 150}" y="{TOP + 16 * j}" width="10" height="10" '
            f'fill="{COLOURS[j % len(COLOURS)]}"/><text x="{WIDTH - RIGHT - 135}" '
            f'y="{TOP + 16 * j + 9}" class="tick">{escape(names.get(y, y))}</text>'
            for j, y in enumerate(chart.ys)) + "</svg>")
    return mark_safe(svg)


def _svg(name: str, height: int, body: list[str], label: str) -> str:
    return (f'<svg class="chart" data-chart="{escape(name)}" role="img" '
            f'aria-label="{escape(label)}" viewBox="0 0 {WIDTH} {height}" '
            f'width="100%" preserveAspectRatio="xMinYMin meet" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(body)}</svg>')


def _number(value: Any) -> float:
    return float(value or 0)


def _nice(top: float) -> float:
    """A round axis maximum at or above top."""
    if top <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(top))
    return next(magnitude * m for m in (1, 2, 2.5, 5, 10) if magnitude * m >= top)


def _axis(top: float, unit: str, plot_h: int) -> list[str]:
    out = []
    for i in range(5):
        value = top * i / 4
        y = TOP + plot_h - plot_h * i / 4
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'class="grid"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
                   f'{escape(_short(value, unit))}</text>')
    return out


def _short(value: float, unit: str) -> str:
    if unit == "usd":  # cents where they are exact ($0.50), else three figures ($0.00025)
        return f"${value:,.2f}" if round(value, 2) == round(value, 9) else f"${value:.3g}"
    if unit == "pct":
        return f"{value:g}%"
    if unit == "ms":
        return f"{value:,.0f} ms"
    return f"{value:,.0f}" if value >= 10 or value == 0 else f"{value:.2g}"


def _x_labels(labels: Sequence[str], x_of: Any, plot_h: int) -> list[str]:
    every = max(1, len(labels) // 10)
    # Labels wider than their slot are slanted, so neighbours do not overlap.
    slant = max(map(len, labels), default=0) * 6 > (WIDTH - LEFT - RIGHT) / len(labels or [1])
    out = []
    for i, label in enumerate(labels):
        if i % every == 0 or i == len(labels) - 1:
            text = label[5:] if len(label) == 10 and label[4] == "-" else label  # MM-DD
            x, y = x_of(i), TOP + plot_h + 16
            place = (f'text-anchor="end" transform="rotate(-25 {x:.1f} {y})"' if slant
                     else 'text-anchor="middle"')
            out.append(f'<text x="{x:.1f}" y="{y}" {place} class="tick">{escape(text)}</text>')
    return out


def bars(name: str, rows: list[dict[str, Any]], chart: Chart) -> str:
    plot_h, plot_w = HEIGHT - TOP - BOTTOM, WIDTH - LEFT - RIGHT
    top = _nice(max((_number(r[y]) for r in rows for y in chart.ys), default=0))
    slot = plot_w / len(rows)
    width = max(1.0, slot * 0.8 / len(chart.ys))
    body = _axis(top, chart.unit, plot_h)
    for i, r in enumerate(rows):
        for j, y in enumerate(chart.ys):
            h = plot_h * _number(r[y]) / top
            x = LEFT + slot * i + slot * 0.1 + width * j
            body.append(
                f'<rect x="{x:.1f}" y="{TOP + plot_h - h:.1f}" width="{width:.1f}" '
                f'height="{h:.1f}" fill="{COLOURS[j % len(COLOURS)]}" data-series="{y}">'
                f'<title>{escape(str(r[chart.x]))}: {escape(display(r[y], chart.unit))}</title>'
                f'</rect>')
    body += _x_labels([str(r[chart.x]) for r in rows], lambda i: LEFT + slot * (i + 0.5), plot_h)
    return _svg(name, HEIGHT, body, f"{name} chart")


def lines(name: str, rows: list[dict[str, Any]], chart: Chart) -> str:
    plot_h, plot_w = HEIGHT - TOP - BOTTOM, WIDTH - LEFT - RIGHT
    top = _nice(max((_number(r[y]) for r in rows for y in chart.ys), default=0))
    step = plot_w / max(1, len(rows) - 1)

    def x_of(i: int) -> float:
        return LEFT + (step * i if len(rows) > 1 else plot_w / 2)

    body = _axis(top, chart.unit, plot_h)
    for j, y in enumerate(chart.ys):
        colour = COLOURS[j % len(COLOURS)]
        points = [(x_of(i), TOP + plot_h - plot_h * _number(r[y]) / top)
                  for i, r in enumerate(rows)]
        body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                    f'data-series="{y}" points="'
                    + " ".join(f"{px:.1f},{py:.1f}" for px, py in points) + '"/>')
        for (px, py), r in zip(points, rows, strict=True):
            body.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}">'
                        f'<title>{escape(str(r[chart.x]))}: {escape(display(r[y], chart.unit))}'
                        f'</title></circle>')
    body += _x_labels([str(r[chart.x]) for r in rows], x_of, plot_h)
    return _svg(name, HEIGHT, body, f"{name} chart")


def hbars(name: str, rows: list[dict[str, Any]], chart: Chart, limit: int = 12) -> str:
    rows = rows[:limit]
    y_key = chart.ys[0]
    line_h, label_w = 26, 220
    height = TOP + line_h * len(rows) + 8
    top = max((_number(r[y_key]) for r in rows), default=0) or 1.0
    plot_w = WIDTH - label_w - 110
    body = []
    for i, r in enumerate(rows):
        y = TOP + line_h * i
        w = plot_w * _number(r[y_key]) / top
        label = str(r[chart.x])
        if len(label) > 32:
            label = label[:31] + "…"
        value = display(r[y_key], chart.unit)
        body.append(f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end" class="label">'
                    f'{escape(label)}</text>')
        body.append(f'<rect x="{label_w}" y="{y + 4}" width="{max(w, 1):.1f}" height="18" '
                    f'fill="{COLOURS[0]}" data-series="{y_key}"><title>{escape(str(r[chart.x]))}'
                    f': {escape(value)}</title></rect>')
        body.append(f'<text x="{label_w + max(w, 1) + 6:.1f}" y="{y + 17}" class="value">'
                    f'{escape(value)}</text>')
    return _svg(name, height, body, f"{name} chart")


def gauges(name: str, rows: list[dict[str, Any]], chart: Chart) -> str:
    """A bar per budget: spent of the limit, the alert threshold marked."""
    line_h, label_w = 34, 260
    height = TOP + line_h * len(rows) + 8
    plot_w = WIDTH - label_w - 90
    body = []
    for i, r in enumerate(rows):
        y = TOP + line_h * i
        used = min(_number(r["used_pct"]), 100.0)
        alert_x = label_w + plot_w * _number(r["alert_at_pct"]) / 100
        label = f"{r['budget']}"
        body.append(f'<text x="{label_w - 8}" y="{y + 19}" text-anchor="end" class="label">'
                    f'{escape(label)}</text>')
        body.append(f'<rect x="{label_w}" y="{y + 6}" width="{plot_w}" height="18" '
                    f'class="track"/>')
        body.append(
            f'<rect x="{label_w}" y="{y + 6}" width="{plot_w * used / 100:.1f}" height="18" '
            f'fill="{STATE_COLOURS.get(r["state"], COLOURS[0])}" data-series="used_pct">'
            f'<title>{escape(label)}: {escape(display(r["spent_usd"], "usd"))} of '
            f'{escape(display(r["limit_usd"], "usd"))} ({escape(display(r["used_pct"], "pct"))})'
            f'</title></rect>')
        body.append(f'<line x1="{alert_x:.1f}" x2="{alert_x:.1f}" y1="{y + 2}" y2="{y + 28}" '
                    f'class="alert"/>')
        body.append(f'<text x="{label_w + plot_w + 6}" y="{y + 19}" class="value">'
                    f'{escape(display(r["used_pct"], "pct"))}</text>')
    return _svg(name, height, body, f"{name} chart")
