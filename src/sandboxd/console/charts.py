"""The dashboard's charts as inline SVG, drawn on the server (no script, readable without one).

Each chart has a <title> and a <desc> that says its numbers in words, for screen readers.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

from ..service.history import Dashboard

W, H = 600, 180
PAD_L, PAD_B, PAD_T = 48, 26, 18

#: Status colours; anything else is grey.
STATUS_COLOURS = {
    "success": "#2e7d32", "failed": "#c62828", "timeout": "#ef6c00", "cancelled": "#6d4c41",
    "running": "#1565c0", "queued": "#5e35b1", "blocked": "#ad1457", "oom": "#4e342e",
}


def _frame(title: str, desc: str, body: str, top: float, span: tuple[str, str] | None = None) -> Markup:
    y_label = f'<text x="{PAD_L - 4}" y="{PAD_T + 8}" text-anchor="end" class="tick">{_num(top)}</text>'
    zero = f'<text x="{PAD_L - 4}" y="{H - PAD_B}" text-anchor="end" class="tick">0</text>'
    axis = f'<line x1="{PAD_L}" y1="{H - PAD_B}" x2="{W}" y2="{H - PAD_B}" class="axis"/>'
    if span is not None:  # the time axis' two ends
        axis += (f'<text x="{PAD_L}" y="{H - 2}" class="tick">{escape(span[0])}</text>'
                 f'<text x="{W}" y="{H - 2}" text-anchor="end" class="tick">{escape(span[1])}</text>')
    return Markup(
        f'<svg viewBox="0 0 {W} {H}" role="img" class="chart">'
        f"<title>{escape(title)}</title><desc>{escape(desc)}</desc>{axis}{y_label}{zero}{body}</svg>"
    )


def _num(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def _x(index: int, count: int) -> float:
    return PAD_L + (W - PAD_L) * index / max(count, 1)


def _y(value: float, top: float) -> float:
    return H - PAD_B - (H - PAD_B - PAD_T) * (value / top if top else 0)


def bars(values: Sequence[int], title: str, desc: str, span: tuple[str, str] | None = None) -> Markup:
    top = max(max(values, default=0), 1)
    width = (W - PAD_L) / max(len(values), 1)
    body = "".join(
        f'<rect x="{_x(i, len(values)) + 1:.1f}" y="{_y(v, top):.1f}" width="{max(width - 2, 1):.1f}" '
        f'height="{H - PAD_B - _y(v, top):.1f}" class="bar"><title>{v}</title></rect>'
        for i, v in enumerate(values) if v
    )
    return _frame(title, desc, body, top, span)


def lines(
    series: dict[str, Sequence[float | None]], title: str, desc: str, *, limit: float | None = None,
    span: tuple[str, str] | None = None,
) -> Markup:
    top = max([v for s in series.values() for v in s if v is not None] + [limit or 0, 1])
    body = []
    for n, (name, values) in enumerate(series.items()):
        points = " ".join(
            f"{_x(i, len(values)) + (W - PAD_L) / len(values) / 2:.1f},{_y(v, top):.1f}"
            for i, v in enumerate(values) if v is not None
        )
        body.append(f'<polyline points="{points}" class="line line{n}"><title>{escape(name)}</title></polyline>')
        body.extend(  # a dot at each value: a lone minute shows too
            f'<circle cx="{point.split(",")[0]}" cy="{point.split(",")[1]}" r="2.5" class="dot{n}"/>'
            for point in points.split()
        )
    if limit is not None:
        y = _y(limit, top)
        body.append(f'<line x1="{PAD_L}" y1="{y:.1f}" x2="{W}" y2="{y:.1f}" class="limit"/>')
        body.append(f'<text x="{W - 4}" y="{y - 3:.1f}" text-anchor="end" class="tick">limit {limit:.0f}</text>')
    return _frame(title, desc, "".join(body), top, span)


def status_mix(dashboard: Dashboard) -> Markup:
    total = sum(dashboard.statuses.values())
    if not total:
        return Markup('<p class="muted">No executions in this period.</p>')
    x, parts = 0.0, []
    for status, count in dashboard.statuses.items():
        width = W * count / total
        colour = STATUS_COLOURS.get(status, "#757575")
        parts.append(
            f'<rect x="{x:.1f}" y="0" width="{width:.1f}" height="24" fill="{colour}">'
            f"<title>{escape(status)}: {count}</title></rect>"
        )
        x += width
    words = ", ".join(f"{status} {count}" for status, count in dashboard.statuses.items())
    return Markup(
        f'<svg viewBox="0 0 {W} 24" role="img" class="chart mix" preserveAspectRatio="none">'
        f"<title>Status mix</title><desc>{escape(words)}</desc>{''.join(parts)}</svg>"
    )
