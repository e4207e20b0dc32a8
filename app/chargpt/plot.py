"""The loss curves as an SVG line chart, drawn with the standard library alone."""

from __future__ import annotations

import math
from typing import Callable

WIDTH, HEIGHT = 700, 450
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 50  # margins around the plot area
SERIES = (("train_loss", "train", "#1f77b4"), ("val_loss", "val", "#ff7f0e"))


def loss_chart_svg(history: list[dict]) -> str:
    """Train and val loss against step, from metrics.jsonl's records; non-finite losses are left out."""
    series = [(label, color, [(record["step"], record[key]) for record in history if is_finite(record.get(key))])
              for key, label, color in SERIES]
    points = [point for _, _, line in series for point in line]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
             f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
             f'<text x="{WIDTH / 2}" y="{TOP / 2 + 5}" text-anchor="middle" font-size="15">chargpt loss</text>',
             f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 10}" text-anchor="middle">step</text>',
             f'<text x="18" y="{(TOP + HEIGHT - BOTTOM) / 2}" text-anchor="middle" '
             f'transform="rotate(-90 18 {(TOP + HEIGHT - BOTTOM) / 2})">cross-entropy loss</text>']
    if points:
        x_ticks = nice_ticks(min(step for step, _ in points), max(step for step, _ in points))
        y_ticks = nice_ticks(min(loss for _, loss in points), max(loss for _, loss in points))
        x = scale(x_ticks[0], x_ticks[-1], LEFT, WIDTH - RIGHT)
        y = scale(y_ticks[0], y_ticks[-1], HEIGHT - BOTTOM, TOP)
        parts += axis_ticks(x_ticks, y_ticks, x, y)
        for label, color, line in series:
            coordinates = " ".join(f"{x(step):.1f},{y(loss):.1f}" for step, loss in line)
            parts.append(f'<polyline class="{label}" points="{coordinates}" fill="none" stroke="{color}" '
                         f'stroke-width="2"/>')
            parts += [f'<circle cx="{x(step):.1f}" cy="{y(loss):.1f}" r="3" fill="{color}"/>' for step, loss in line]
        parts += legend()
    else:
        parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no metrics recorded</text>')
    parts.append(f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" height="{HEIGHT - TOP - BOTTOM}" '
                 f'fill="none" stroke="black"/>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def is_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About count round values, 1, 2 or 5 times a power of ten apart, from below low to above high."""
    if high == low:  # a single point, or a flat line: centre it
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(multiple * magnitude for multiple in (1, 2, 5, 10) if multiple * magnitude >= raw)
    first, last = math.floor(low / step), math.ceil(high / step)
    return [index * step for index in range(first, last + 1)]


def scale(low: float, high: float, start: float, end: float) -> Callable[[float], float]:
    """The linear map of low..high onto the pixels start..end."""
    return lambda value: start + (value - low) * (end - start) / (high - low)


def axis_ticks(x_ticks: list[float], y_ticks: list[float], x: Callable, y: Callable) -> list[str]:
    """Grid lines and labels at every tick of both axes."""
    parts = []
    for tick in x_ticks:
        parts.append(f'<line x1="{x(tick):.1f}" y1="{TOP}" x2="{x(tick):.1f}" y2="{HEIGHT - BOTTOM}" stroke="#ddd"/>')
        parts.append(f'<text x="{x(tick):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">'
                     f'{tick_label(tick, x_ticks)}</text>')
    for tick in y_ticks:
        parts.append(f'<line x1="{LEFT}" y1="{y(tick):.1f}" x2="{WIDTH - RIGHT}" y2="{y(tick):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">'
                     f'{tick_label(tick, y_ticks)}</text>')
    return parts


def tick_label(tick: float, ticks: list[float]) -> str:
    """The tick with as many decimals as the spacing of the ticks needs."""
    # 1e-9: the difference of two ticks may fall a hair short of the spacing.
    decimals = max(0, -math.floor(math.log10(ticks[1] - ticks[0]) + 1e-9))
    return f"{tick:.{decimals}f}"


def legend() -> list[str]:
    """A key in the top right corner of the plot area: a line of each series' colour, then its name."""
    left, top = WIDTH - RIGHT - 80, TOP + 10
    parts = [f'<rect x="{left}" y="{top}" width="70" height="{10 + 18 * len(SERIES)}" fill="white" stroke="#999"/>']
    for index, (_, label, color) in enumerate(SERIES):
        middle = top + 14 + 18 * index
        parts.append(f'<line x1="{left + 8}" y1="{middle}" x2="{left + 28}" y2="{middle}" stroke="{color}" '
                     f'stroke-width="2"/>')
        parts.append(f'<text x="{left + 34}" y="{middle + 4}">{label}</text>')
    return parts
