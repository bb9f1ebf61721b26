"""Charts as inline SVG, drawn on the server: no script, no external request, readable without CSS.

Every mark carries a `<title>` (the browser's tooltip) with its exact label and value, so a chart can be
read precisely and checked by a test. Colours come from the stylesheet through classes (`series-0`, ...):
the strict Content-Security-Policy forbids inline styles, and SVG presentation via classes needs none.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH = 640
HEIGHT = 190
LEFT = 52
RIGHT = 10
TOP = 12
BOTTOM = 24
X_LABELS = 5
MAX_BAR_W = 36.0


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    values: Sequence[float | None]  # one per label; None: no value (drawn as a gap)


def compact(value: float) -> str:
    """1234 -> '1.2k', 0.25 -> '0.25': short numbers for axes."""
    size = abs(value)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if size >= scale:
            return f"{value / scale:.1f}".rstrip("0").rstrip(".") + unit
    if size == 0 or size >= 10:
        return f"{value:.0f}"
    return f"{value:.2f}".rstrip("0").rstrip(".")


def exact(value: float) -> str:
    """The value as stored: integers without a decimal point, fractions with up to 3 decimals."""
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.3f}".rstrip("0").rstrip(".")


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * magnitude:
            return step * magnitude
    return 10.0 * magnitude


def _frame(title: str, body: list[str], top: float, fmt: Callable[[float], str]) -> Markup:
    plot_h = HEIGHT - TOP - BOTTOM
    grid: list[str] = []
    for i in range(3):
        value = top * i / 2
        y = TOP + plot_h - plot_h * i / 2
        grid.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        grid.append(f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                    f'{escape(fmt(value))}</text>')
    svg = (f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
           f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
           + "".join(grid) + "".join(body) + "</svg>")
    return Markup(svg)  # noqa: S704  (built from escaped parts and numbers only)


def _x_labels(labels: Sequence[str], x_of: Callable[[int], float]) -> list[str]:
    n = len(labels)
    if n == 0:
        return []
    picks = sorted({round(i * (n - 1) / (X_LABELS - 1)) for i in range(X_LABELS)}) if n > 1 else [0]
    out = []
    for index in picks:
        anchor = "start" if index == 0 and n > 1 else "end" if index == n - 1 and n > 1 else "middle"
        out.append(f'<text class="axis" x="{x_of(index):.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}">'
                   f'{escape(labels[index])}</text>')
    return out


def empty(title: str, message: str = "no data yet") -> Markup:
    svg = (f'<svg class="chart empty" viewBox="0 0 {WIDTH} {HEIGHT // 2}" role="img" '
           f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
           f'<text class="axis" x="{WIDTH / 2}" y="{HEIGHT / 4}" text-anchor="middle">{escape(message)}'
           "</text></svg>")
    return Markup(svg)  # noqa: S704  (escaped parts only)


def bars(title: str, labels: Sequence[str], series: Sequence[Series], *,
         fmt: Callable[[float], str] = exact) -> Markup:
    """Grouped bars: one group per label, one bar per series."""
    values = [v for s in series for v in s.values if v is not None]
    if not labels or not values:
        return empty(title)
    top = _nice_max(max(values))
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    group_w = plot_w / len(labels)
    bar_w = min(MAX_BAR_W, max(1.0, group_w * 0.8 / len(series)))
    body: list[str] = []
    for i, label in enumerate(labels):
        for k, s in enumerate(series):
            value = s.values[i]
            if value is None:
                continue
            h = plot_h * value / top
            x = LEFT + (i + 0.5) * group_w - bar_w * len(series) / 2 + k * bar_w
            name = f"{label} — {s.name}: {fmt(value)}" if len(series) > 1 else f"{label}: {fmt(value)}"
            body.append(f'<rect class="bar series-{k}" x="{x:.1f}" y="{TOP + plot_h - h:.1f}" '
                        f'width="{bar_w:.1f}" height="{max(h, 0.0):.1f}">'
                        f'<title>{escape(name)}</title></rect>')
    body += _x_labels(labels, lambda i: LEFT + (i + 0.5) * group_w)
    return _frame(title, body, top, compact)


def line(title: str, labels: Sequence[str], values: Sequence[float | None], *,
         fmt: Callable[[float], str] = exact) -> Markup:
    """One series as a line over an area, a dot (with its tooltip) per value."""
    known = [v for v in values if v is not None]
    if not labels or not known:
        return empty(title)
    top = _nice_max(max(known))
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    n = len(labels)

    def x_of(i: int) -> float:
        return LEFT + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y_of(v: float) -> float:
        return TOP + plot_h - plot_h * v / top

    body: list[str] = []
    runs: list[list[tuple[float, float]]] = [[]]
    for i, v in enumerate(values):
        if v is None:
            runs.append([])
        else:
            runs[-1].append((x_of(i), y_of(v)))
    base = TOP + plot_h
    for run in (r for r in runs if r):
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in run)
        body.append(f'<polygon class="area" points="{run[0][0]:.1f},{base:.1f} {pts} '
                    f'{run[-1][0]:.1f},{base:.1f}"/>')
        body.append(f'<polyline class="line" points="{pts}"/>')
    for i, v in enumerate(values):
        if v is not None:
            body.append(f'<circle class="dot" cx="{x_of(i):.1f}" cy="{y_of(v):.1f}" r="2.5">'
                        f'<title>{escape(labels[i])}: {escape(fmt(v))}</title></circle>')
    body += _x_labels(labels, x_of)
    return _frame(title, body, top, compact)


def stack(title: str, parts: Sequence[tuple[str, float, str]]) -> Markup:
    """One horizontal bar split into (name, value, css class) parts, e.g. ok / late / failing / never."""
    total = sum(value for _, value, _ in parts)
    body: list[str] = []
    x = 0.0
    for name, value, css in parts:
        if value <= 0 or total <= 0:
            continue
        w = 100.0 * value / total
        body.append(f'<rect class="{escape(css)}" x="{x:.2f}" y="0" width="{w:.2f}" height="10">'
                    f'<title>{escape(name)}: {escape(exact(value))}</title></rect>')
        x += w
    if not body:
        body.append('<rect class="never" x="0" y="0" width="100" height="10"/>')
    svg = (f'<svg class="stack" viewBox="0 0 100 10" preserveAspectRatio="none" role="img" '
           f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">' + "".join(body) + "</svg>")
    return Markup(svg)  # noqa: S704  (escaped parts only)
