"""Chart geometry for the dashboard's inline SVG: pure functions from numbers to shapes.

Why: the dashboard draws its charts on the server (no JavaScript charting library,
nothing loaded from the internet), so the only thing to get right is the arithmetic —
where each bar, point and tick goes. That lives here, testable without a browser; the
templates only turn these shapes into ``<rect>``, ``<polyline>`` and ``<text>``.
Coordinates are SVG user units with y growing downwards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Bar", "BarChart", "LineChart", "Point", "Series", "Tick", "bar_chart",
           "line_chart", "nice_ceiling", "top_items"]


@dataclass(frozen=True, slots=True)
class Tick:
    position: float  # y for value ticks, x for category ticks
    label: str


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: float


@dataclass(frozen=True, slots=True)
class BarChart:
    width: float
    height: float
    left: float
    right: float
    top: float
    bottom: float  # the y of the value 0
    bars: tuple[Bar, ...]
    y_ticks: tuple[Tick, ...]


@dataclass(frozen=True, slots=True)
class Point:
    x: float
    y: float
    label: str


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    css_class: str
    points: tuple[Point, ...]
    segments: tuple[str, ...]  # polyline "x,y x,y ..." runs, broken where values are None


@dataclass(frozen=True, slots=True)
class LineChart:
    width: float
    height: float
    left: float
    right: float
    top: float
    bottom: float
    series: tuple[Series, ...]
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 5 × 10^k that is at least ``value`` (1 for 0 or less)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 5.0, 10.0):
        if step * power >= value * (1 - 1e-12):
            return step * power
    return 10.0 * power  # pragma: no cover - the loop always returns


def top_items(items: Sequence[tuple[str, float]], limit: int, other: str = "other"
              ) -> list[tuple[str, float]]:
    """The ``limit - 1`` largest items (order kept) and the rest summed as ``other``,
    or all items if there are at most ``limit``."""
    if len(items) <= limit:
        return list(items)
    keep = set(sorted(range(len(items)), key=lambda i: -items[i][1])[:limit - 1])
    kept = [item for i, item in enumerate(items) if i in keep]
    return [*kept, (other, sum(v for i, (_, v) in enumerate(items) if i not in keep))]


def _label(value: float) -> str:
    return f"{value:g}" if value < 10_000 else f"{value / 1000:g}k"


def bar_chart(items: Sequence[tuple[str, float]], *, width: float = 640,
              height: float = 240, left: float = 44, right: float = 8, top: float = 10,
              bottom: float = 56) -> BarChart:
    """Vertical bars for (label, value) items, scaled to a 1-2-5 ceiling with 4 ticks."""
    plot_bottom, plot_height = height - bottom, height - bottom - top
    ceiling = nice_ceiling(max((v for _, v in items), default=0.0))
    slot = (width - left - right) / max(len(items), 1)
    bars = tuple(
        Bar(x=round(left + i * slot + slot * 0.15, 2),
            y=round(plot_bottom - value / ceiling * plot_height, 2),
            width=round(slot * 0.7, 2), height=round(value / ceiling * plot_height, 2),
            label=label, value=value)
        for i, (label, value) in enumerate(items))
    ticks = tuple(Tick(round(plot_bottom - plot_height * k / 4, 2), _label(ceiling * k / 4))
                  for k in range(5))
    return BarChart(width, height, left, width - right, top, plot_bottom, bars, ticks)


def line_chart(x_labels: Sequence[str], series: Sequence[tuple[str, str, Sequence[float | None]]],
               *, y_max: float = 1.0, percent: bool = True, width: float = 640,
               height: float = 240, left: float = 44, right: float = 24, top: float = 10,
               bottom: float = 40, label_every: int = 6) -> LineChart:
    """Lines over evenly spaced x positions, one per (name, css class, values); a value
    of ``None`` (nothing measured) breaks its line. Values run from 0 to ``y_max``."""
    plot_bottom, plot_height = height - bottom, height - bottom - top
    count = max(len(x_labels), 1)
    step = (width - left - right) / max(count - 1, 1)

    def x_of(i: int) -> float:
        return round(left + i * step if count > 1 else (left + width - right) / 2, 2)

    def y_of(value: float) -> float:
        return round(plot_bottom - min(max(value, 0.0), y_max) / y_max * plot_height, 2)

    drawn = []
    for name, css_class, values in series:
        points: list[Point] = []
        segments: list[str] = []
        run: list[str] = []
        for i, value in enumerate(values):
            if value is None:
                if run:
                    segments.append(" ".join(run))
                run = []
                continue
            point = Point(x_of(i), y_of(value),
                          f"{x_labels[i]}: {value:.0%}" if percent else f"{x_labels[i]}: "
                          f"{value:g}")
            points.append(point)
            run.append(f"{point.x},{point.y}")
        if run:
            segments.append(" ".join(run))
        drawn.append(Series(name, css_class, tuple(points), tuple(segments)))
    x_ticks = tuple(Tick(x_of(i), label) for i, label in enumerate(x_labels)
                    if i % label_every == 0 or i == count - 1)
    y_ticks = tuple(Tick(y_of(y_max * k / 4), f"{y_max * k / 4:.0%}" if percent
                         else _label(y_max * k / 4)) for k in range(5))
    return LineChart(width, height, left, width - right, top, plot_bottom, tuple(drawn),
                     x_ticks, y_ticks)
