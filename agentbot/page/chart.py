"""The activity charts: handoffs per hour (last 24 hours) and per day (the last 7 days) by rule, as bar geometry
for an SVG that stretches to the page's width, and the one definition of "the last 7 days" the page uses."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from ..store import DecisionEntry
from . import words

# SVG units: the bars' box (stretched to the page's width by CSS; the labels are HTML, so they stay legible).
WIDTH, HEIGHT, TOP = 1000, 160, 6


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
    labels: list[tuple[float, str]] = field(default_factory=list)  # (left edge in % of the width, text)
    peak: int = 0
    total: int = 0
    width: int = WIDTH
    height: int = HEIGHT


def week_start(now: datetime, zone: ZoneInfo) -> datetime:
    """The start of "the last 7 days" everywhere on the page: midnight six days before today, in TIMEZONE (today
    and the six days before it, as the daily chart shows them)."""
    return day_start(now, zone) - timedelta(days=6)  # wall-clock arithmetic: a midnight, also across DST


def day_start(now: datetime, zone: ZoneInfo) -> datetime:
    return now.astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0)


def per_hour(entries: list[DecisionEntry], now: datetime, zone: ZoneInfo) -> Chart:
    end = now.astimezone(zone).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    slots = [end - timedelta(hours=24 - i) for i in range(24)]
    chart = _bars(
        "Handoffs per hour, last 24 hours", entries, slots, timedelta(hours=1), zone, lambda s: s.strftime("%H:00")
    )
    chart.labels = [(100 * i / 24, slots[i].strftime("%H:00")) for i in range(0, 24, 6)]
    return chart


def per_day(entries: list[DecisionEntry], now: datetime, zone: ZoneInfo) -> Chart:
    first = week_start(now, zone)
    slots = [first + timedelta(days=i) for i in range(7)]  # wall-clock arithmetic: midnights, also across DST
    chart = _bars(
        "Handoffs per day, last 7 days", entries, slots, timedelta(days=1), zone, lambda s: s.strftime("%a %d %b")
    )
    chart.labels = [(100 * i / 7, slots[i].strftime("%a %d")) for i in range(7)]
    return chart


def _bars(
    title: str,
    entries: list[DecisionEntry],
    slots: list[datetime],
    span: timedelta,
    zone: ZoneInfo,
    slot_words: Callable[[datetime], str],
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
    plot, width = HEIGHT - TOP, WIDTH / len(slots)
    for i, c in enumerate(counts):
        y: float = HEIGHT
        for rule in sorted(c, key=lambda r: (list(words.RULES).index(r) if r in words.RULES else 99, r)):
            h = plot * c[rule] / peak
            y -= h
            chart.bars.append(
                Bar(
                    round(i * width + width * 0.1, 1),
                    round(y, 1),
                    round(width * 0.8, 1),
                    round(h, 1),
                    words.colour(rule),
                    rule,
                    c[rule],
                    slot_words(slots[i]),
                )
            )
    return chart
