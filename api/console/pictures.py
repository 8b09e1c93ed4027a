"""Pictures of a resource's recent history, drawn by the server as SVG.

Plain SVG text (no charting library, nothing to load): each picture scales
to its box (viewBox), carries a <title> and an aria-label for screen
readers, and every text in it is escaped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from markupsafe import Markup, escape

from resv.archiver.reads import TimelineEvent

W, H = 640, 220
WIDE = 1000
"""Width of the remaining-capacity picture, which spans the page."""
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 26, 30

CONFIRMED_COLOUR = "#1a7f37"
REJECTED_COLOUR = "#cf222e"
CANCELLED_COLOUR = "#0969da"


def _svg(label: str, body: str, height: int = H, w: int = W) -> Markup:
    return Markup(
        f'<svg class="picture" role="img" aria-label="{escape(label)}" viewBox="0 0 {w} {height}" '
        f'preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(label)}</title>{body}</svg>"
    )


def _empty(label: str, w: int = W) -> Markup:
    return _svg(label, f'<text x="{w / 2}" y="{H / 2}" text-anchor="middle" class="muted">no decisions yet</text>',
                w=w)


def _axes(y_max: int, y_label: str, t0: int, t1: int, w: int = W) -> str:
    """Frame, y ticks at 0, half and max, the period's ends under the x axis."""
    x0, x1, y0, y1 = LEFT, w - RIGHT, H - BOTTOM, TOP
    parts = [f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" class="axis"/>',
             f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" class="axis"/>']
    for value in sorted({0, y_max // 2, y_max}):
        y = _y(value, y_max)
        parts.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{value}</text>')
        parts.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" class="grid"/>')
    parts.append(f'<text x="{x0}" y="{H - 8}" class="tick">{escape(_clock(t0))}</text>')
    parts.append(f'<text x="{x1}" y="{H - 8}" text-anchor="end" class="tick">{escape(_clock(t1))} UTC</text>')
    parts.append(f'<text x="{x0}" y="{TOP - 10}" class="tick">{escape(y_label)}</text>')
    return "".join(parts)


def _clock(ts_us: int) -> str:
    seconds, micros = divmod(ts_us, 1_000_000)
    seconds %= 86_400
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{micros // 1000:03d}"


def _x(ts: int, t0: int, t1: int, w: int = W) -> float:
    span = max(t1 - t0, 1)
    return LEFT + (ts - t0) / span * (w - LEFT - RIGHT)


def _y(value: float, y_max: int) -> float:
    return H - BOTTOM - value / max(y_max, 1) * (H - BOTTOM - TOP)


def remaining_over_time(events: Sequence[TimelineEvent], capacity: int) -> Markup:
    """Remaining capacity as a step line; confirmations, cancellations and
    rejections marked where they happened."""
    label = "Remaining capacity over time, with confirmations, cancellations and rejections"
    points = [e for e in events if e.ts is not None and e.remaining is not None]
    if not points:
        return _empty(label, WIDE)
    t0, t1 = points[0].ts, points[-1].ts
    y_max = max([capacity, *(e.remaining for e in points)])
    path, last_y = [], None
    for e in points:
        x, y = _x(e.ts, t0, t1, WIDE), _y(e.remaining, y_max)
        path.append(f"M{x:.1f},{y:.1f}" if last_y is None else f"H{x:.1f}V{y:.1f}")
        last_y = y
    path.append(f"H{WIDE - RIGHT}")
    marks = []
    for e in points:
        x, y = _x(e.ts, t0, t1, WIDE), _y(e.remaining, y_max)
        if e.type == "RESERVATION_CONFIRMED":
            marks.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" class="mark-confirmed"/>')
        elif e.type == "RESERVATION_CANCELLED":
            marks.append(f'<rect x="{x - 3:.1f}" y="{y - 3:.1f}" width="6" height="6" class="mark-cancelled"/>')
        elif e.decision == "REJECTED":
            marks.append(f'<path d="M{x - 3:.1f},{y - 3:.1f}l6,6m0,-6l-6,6" class="mark-rejected"/>')
    body = _axes(y_max, "remaining", t0, t1, WIDE) + f'<path d="{"".join(path)}" class="step"/>' + "".join(marks)
    return _svg(label, body, w=WIDE)


def decisions_per_second(events: Sequence[TimelineEvent]) -> Markup:
    """Decisions per second, confirmed and rejected stacked, in up to 60
    equal buckets over the period (one second each when it is short)."""
    label = "Decisions per second by outcome"
    decided = [e for e in events if e.ts is not None and e.decision in ("CONFIRMED", "REJECTED")]
    if not decided:
        return _empty(label)
    t0, t1 = decided[0].ts, decided[-1].ts
    bucket_us = max(1_000_000, -(-(t1 - t0 + 1) // 60))
    n = (t1 - t0) // bucket_us + 1
    confirmed, rejected = [0] * n, [0] * n
    for e in decided:
        (confirmed if e.decision == "CONFIRMED" else rejected)[(e.ts - t0) // bucket_us] += 1
    per_s = bucket_us / 1_000_000
    rate = [(c / per_s, r / per_s) for c, r in zip(confirmed, rejected)]
    y_max = max(1, int(max(c + r for c, r in rate) + 0.999))
    width = (W - LEFT - RIGHT) / n
    bars = []
    for i, (c, r) in enumerate(rate):
        x = LEFT + i * width + 1
        w = max(width - 2, 1)
        yc = _y(c, y_max)
        yr = _y(c + r, y_max)
        bars.append(f'<rect x="{x:.1f}" y="{yc:.1f}" width="{w:.1f}" height="{H - BOTTOM - yc:.1f}" '
                    f'class="bar-confirmed"><title>{c:g} confirmed/s</title></rect>')
        bars.append(f'<rect x="{x:.1f}" y="{yr:.1f}" width="{w:.1f}" height="{yc - yr:.1f}" '
                    f'class="bar-rejected"><title>{r:g} rejected/s</title></rect>')
    return _svg(label, _axes(y_max, "decisions/s", t0, t0 + n * bucket_us) + "".join(bars))


def refusal_reasons(events: Sequence[TimelineEvent]) -> Markup:
    """How many refusals of each exact reason, most frequent first."""
    label = "Refusals by reason"
    counts = Counter(e.reason or "(none)" for e in events if e.decision == "REJECTED")
    if not counts:
        return _empty(label)
    rows = counts.most_common(8)
    row_h = 34
    height = TOP + row_h * len(rows) + 8
    top = rows[0][1]
    name_w, bar_w = 210, W - 210 - 60
    parts = []
    for i, (reason, count) in enumerate(rows):
        y = TOP + i * row_h
        w = max(count / top * bar_w, 2)
        parts.append(f'<text x="{name_w - 8}" y="{y + 19}" text-anchor="end" class="label">{escape(reason)}</text>')
        parts.append(f'<rect x="{name_w}" y="{y + 4}" width="{w:.1f}" height="22" class="bar-rejected"/>')
        parts.append(f'<text x="{name_w + w + 6:.1f}" y="{y + 19}" class="label">{count}</text>')
    return _svg(label, f'<text x="{name_w}" y="{TOP - 10}" class="tick">refusals</text>' + "".join(parts), height)
