"""The run as a picture: devices per version over time (stacked areas), failures per
stage as marks on the time axis, and every rollout decision as a labelled line.

Plain SVG text: no plotting dependency for one chart."""

from __future__ import annotations

from collections.abc import Callable
from html import escape

from benchmarks.fleet_sim._run import Outcome

Scale = Callable[[float], float]
W, H, PAD = 900, 420, 60
COLOURS = {"1.0": "#8fb3d9", "1.1": "#e6a04c"}
STAGE_COLOURS = ["#c0392b", "#8e44ad", "#16a085", "#2c3e50"]


def render(o: Outcome) -> str:
    end = max(o.run_seconds, 1.0)
    n = max(o.devices, 1)

    def x(t: float) -> float:
        return PAD + (W - 2 * PAD) * t / end

    def y(count: float) -> float:
        return H - PAD - (H - 2 * PAD) * count / n

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
             f'font-family="sans-serif" font-size="11">',
             f'<rect width="{W}" height="{H}" fill="white"/>',
             f'<text x="{PAD}" y="20" font-size="14">{escape(_title(o))}</text>']
    parts += _areas(o, x, y)
    parts += _axes(o, x, y, end)
    parts += _failures(o, x)
    parts += _decisions(o, x)
    parts.append("</svg>")
    return "\n".join(parts)


def _title(o: Outcome) -> str:
    return (f"fleet_sim '{o.scenario.name}': {o.devices} devices, check-in every "
            f"{o.interval} s, {o.db}, {o.workers} worker(s)")


def _areas(o: Outcome, x: Scale, y: Scale) -> list[str]:
    parts, below = [], [0.0] * len(o.samples)
    for version in ("1.0", "1.1"):
        top = [b + s.versions.get(version, 0) for b, s in zip(below, o.samples, strict=True)]
        upper = [f"{x(s.t):.1f},{y(v):.1f}" for s, v in zip(o.samples, top, strict=True)]
        lower = [f"{x(s.t):.1f},{y(v):.1f}" for s, v in
                 reversed(list(zip(o.samples, below, strict=True)))]
        if upper:
            parts.append(f'<polygon points="{" ".join(upper + lower)}" '
                         f'fill="{COLOURS[version]}" stroke="none"/>')
        below = top
    for i, version in enumerate(("1.0", "1.1")):
        parts.append(f'<rect x="{W - PAD - 120}" y="{30 + 16 * i}" width="12" height="12" '
                     f'fill="{COLOURS[version]}"/><text x="{W - PAD - 104}" '
                     f'y="{40 + 16 * i}">devices on {version}</text>')
    return parts


def _axes(o: Outcome, x: Scale, y: Scale, end: float) -> list[str]:
    parts = [f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="black"/>',
             f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="black"/>',
             f'<text x="{W / 2}" y="{H - 15}" text-anchor="middle">check-in intervals since '
             f'the rollout started</text>',
             f'<text x="{PAD - 5}" y="{PAD}" text-anchor="end">{o.devices}</text>',
             f'<text x="{PAD - 5}" y="{H - PAD}" text-anchor="end">0</text>']
    k = 0
    while k * o.interval <= end:
        px = x(k * o.interval)
        parts.append(f'<line x1="{px:.1f}" y1="{H - PAD}" x2="{px:.1f}" y2="{H - PAD + 5}" '
                     f'stroke="black"/><text x="{px:.1f}" y="{H - PAD + 17}" '
                     f'text-anchor="middle">{k}</text>')
        k += 1
    return parts


def _failures(o: Outcome, x: Scale) -> list[str]:
    stage_of = {d: stage for _, d, stage in o.fleet.seen.offers}
    parts = []
    for t, device, ok in o.fleet.seen.outcomes:
        if not ok:
            stage = stage_of.get(device, 0)
            colour = STAGE_COLOURS[min(stage, len(STAGE_COLOURS) - 1)]
            parts.append(f'<circle cx="{x(t):.1f}" cy="{H - PAD - 6 - 7 * stage}" r="3" '
                         f'fill="{colour}"><title>failure, stage {stage + 1}</title></circle>')
    if parts:
        parts.append(f'<text x="{PAD + 4}" y="{H - PAD - 14 - 7 * 3}" fill="#c0392b">'
                     'dots: health failures (row = stage)</text>')
    return parts


def _decisions(o: Outcome, x: Scale) -> list[str]:
    parts = []
    marks = [(d.t, d.what) for d in o.decisions]
    if o.crossed_at is not None:
        marks.append((o.crossed_at, "threshold crossed"))
    if o.back_at is not None:
        marks.append((o.back_at, "all back on 1.0"))
    for i, (t, what) in enumerate(sorted(marks)):
        px = x(t)
        parts.append(f'<line x1="{px:.1f}" y1="{PAD}" x2="{px:.1f}" y2="{H - PAD}" '
                     f'stroke="#333" stroke-dasharray="4,3"/><text x="{px + 3:.1f}" '
                     f'y="{PAD + 12 + 12 * (i % 6)}">{escape(what)}</text>')
    return parts
