"""The activity chart: handoffs per hour (24 h) and per day (7 days) by rule, as bar geometry for SVG."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from ..store import DecisionEntry

COLOURS = ["#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2", "#65a30d", "#dc2626", "#475569"]
WIDTH, HEIGHT, TOP, BOTTOM = 480, 150, 18, 20  # SVG units; the plot is HEIGHT - TOP - BOTTOM high


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    rule: str
    count: int
    slot: str  # the hour or day, in words


@dataclass
class Chart:
    title: str
    bars: list[Bar] = field(default_factory=list)
    labels: list[tuple[float, str]] = field(default_factory=list)
    peak: int = 0
    total: int = 0
    width: int = WIDTH
    height: int = HEIGHT


def colours(entries: list[DecisionEntry]) -> dict[str, str]:
    rules = sorted({e.rule or "other" for e in entries if e.outcome == "handoff"})
    return {rule: COLOURS[i % len(COLOURS)] for i, rule in enumerate(rules)}


def per_hour(entries: list[DecisionEntry], now: datetime, zone: ZoneInfo, palette: dict[str, str]) -> Chart:
    end = now.astimezone(zone).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    slots = [end - timedelta(hours=24 - i) for i in range(24)]
    chart = _bars(
        "Handoffs per hour, last 24 hours",
        entries,
        slots,
        timedelta(hours=1),
        zone,
        palette,
        lambda s: s.strftime("%H:00"),
    )
    chart.labels = [(_x(i, 24), slots[i].strftime("%H:00")) for i in range(0, 24, 6)]
    return chart


def per_day(entries: list[DecisionEntry], now: datetime, zone: ZoneInfo, palette: dict[str, str]) -> Chart:
    today = now.astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0)
    slots = [(today - timedelta(days=6 - i)) for i in range(7)]
    chart = _bars(
        "Handoffs per day, last 7 days",
        entries,
        slots,
        timedelta(days=1),
        zone,
        palette,
        lambda s: s.strftime("%a %d %b"),
    )
    chart.labels = [(_x(i, 7), slots[i].strftime("%a %d")) for i in range(7)]
    return chart


def _x(i: int, n: int) -> float:
    return i * WIDTH / n


def _bars(
    title: str,
    entries: list[DecisionEntry],
    slots: list[datetime],
    span: timedelta,
    zone: ZoneInfo,
    palette: dict[str, str],
    words: Callable[[datetime], str],
) -> Chart:
    counts: list[Counter[str]] = [Counter() for _ in slots]
    start, end = slots[0], slots[-1] + span
    for e in entries:
        if e.outcome != "handoff":
            continue
        at = datetime.fromtimestamp(e.at, zone)
        if start <= at < end:
            # Wall-clock slots: an hour or day is found by walking, which stays right across DST changes.
            i = max(j for j, s in enumerate(slots) if s <= at)
            counts[i][e.rule or "other"] += 1
    peak = max((sum(c.values()) for c in counts), default=0)
    chart = Chart(title, peak=peak, total=sum(sum(c.values()) for c in counts))
    plot = HEIGHT - TOP - BOTTOM
    width = WIDTH / len(slots)
    for i, c in enumerate(counts):
        y: float = HEIGHT - BOTTOM
        for rule in sorted(c):
            h = plot * c[rule] / peak
            y -= h
            chart.bars.append(
                Bar(
                    round(_x(i, len(slots)) + 1, 1),
                    round(y, 1),
                    round(width - 2, 1),
                    round(h, 1),
                    palette.get(rule, COLOURS[-1]),
                    rule,
                    c[rule],
                    words(slots[i]),
                )
            )
    return chart
