"""The geometry of the pages' bar charts, drawn as SVG by the templates (no JavaScript, no CDN,
nothing inline that a strict Content-Security-Policy would block); pure, no Flask, no DB."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

__all__ = ["Bar", "Chart", "Point", "columns", "rows"]

Number = int | float | Decimal

# Room for the value axis labels (left) and the category labels (below or left).
_AXIS: Final = 56
_FOOT: Final = 34
_ROW_LABEL: Final = 180


@dataclass(frozen=True, slots=True)
class Point:
    """One category: its label, value, where it links (the page behind it) and its tooltip."""

    label: str
    value: Number
    href: str | None = None
    title: str = ""


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    value: Number
    href: str | None
    title: str
    x: float
    y: float
    width: float
    height: float
    # Where the category label goes (middle of the bar below it, or left of a row).
    label_x: float
    label_y: float


@dataclass(frozen=True, slots=True)
class Chart:
    """Bars and axis ticks in a ``width`` by ``height`` viewBox; ``empty`` when every value is 0."""

    kind: str  # "columns" (vertical bars) or "rows" (horizontal bars)
    width: int
    height: int
    bars: tuple[Bar, ...]
    ticks: tuple[tuple[float, str], ...]
    empty: bool


def _nice_max(top: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times 10^n at least ``top``, so the axis reads in round steps."""
    if top <= 0:
        return 1.0
    step = 1.0
    while step * 10 <= top:
        step *= 10
    while step > top:
        step /= 10
    for factor in (1, 2, 2.5, 5, 10):
        if step * factor >= top:
            return step * factor
    return step * 10


def _short(value: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


def _ticks(top: float, length: float, start: float, *, vertical: bool) -> tuple[
        tuple[float, str], ...]:
    out = []
    for i in range(5):
        value = top * i / 4
        offset = length * i / 4
        out.append((start - offset if vertical else start + offset, _short(value)))
    return tuple(out)


def columns(points: Sequence[Point], *, width: int = 640, height: int = 220) -> Chart:
    """Vertical bars, one per point, in order (e.g. months, oldest first)."""
    top = _nice_max(max((float(p.value) for p in points), default=0.0))
    plot_w = width - _AXIS - 8
    plot_h = height - _FOOT - 10
    base = 10 + plot_h
    slot = plot_w / max(1, len(points))
    bars = []
    for i, p in enumerate(points):
        h = plot_h * float(p.value) / top
        x = _AXIS + i * slot + slot * 0.15
        bars.append(Bar(p.label, p.value, p.href, p.title or f"{p.label}: {p.value:,}",
                        round(x, 1), round(base - h, 1), round(slot * 0.7, 1), round(h, 1),
                        round(x + slot * 0.35, 1), base + 16))
    return Chart("columns", width, height, tuple(bars),
                 _ticks(top, plot_h, base, vertical=True),
                 all(float(p.value) == 0 for p in points))


def rows(points: Sequence[Point], *, width: int = 640, row_height: int = 26) -> Chart:
    """Horizontal bars, one per point, top to bottom (e.g. statuses, problem kinds)."""
    top = _nice_max(max((float(p.value) for p in points), default=0.0))
    plot_w = width - _ROW_LABEL - 60
    height = 24 + row_height * max(1, len(points))
    bars = []
    for i, p in enumerate(points):
        w = plot_w * float(p.value) / top
        y = 4 + i * row_height
        bars.append(Bar(p.label, p.value, p.href, p.title or f"{p.label}: {p.value:,}",
                        _ROW_LABEL, y + 3, round(max(w, 0.0), 1), row_height - 8,
                        _ROW_LABEL - 6, y + row_height / 2 + 4))
    return Chart("rows", width, height, tuple(bars),
                 _ticks(top, plot_w, _ROW_LABEL, vertical=False),
                 all(float(p.value) == 0 for p in points))
