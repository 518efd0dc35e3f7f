"""Business hours: parse `BUSINESS_HOURS`, tell whether the team is in, and when it is next."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
EXAMPLE = "mon-fri 09:00-18:00; sat 09:00-13:00"
_CLOCK = re.compile(r"^([01]?\d|2[0-4]):([0-5]\d)$")


@dataclass(frozen=True)
class Hours:
    """Opening intervals per weekday (0 = Monday), closed dates, and the zone they are read in."""

    week: tuple[tuple[tuple[time, time | None], ...], ...]  # end None = midnight
    zone: ZoneInfo
    closed: frozenset[date] = frozenset()

    def intervals(self, day: date) -> list[tuple[datetime, datetime]]:
        if day in self.closed:
            return []
        out = []
        for start, end in self.week[day.weekday()]:
            begin = datetime.combine(day, start, self.zone)
            finish = (
                datetime.combine(day + timedelta(days=1), time(0), self.zone)
                if end is None
                else datetime.combine(day, end, self.zone)
            )
            out.append((begin, finish))
        return out

    def is_open(self, now: datetime) -> bool:
        local = now.astimezone(self.zone)
        return any(a <= now < b for a, b in self.intervals(local.date()))

    def next_open(self, now: datetime) -> datetime | None:
        """The first opening time after `now` (None if no opening within two weeks)."""
        local = now.astimezone(self.zone).date()
        for offset in range(15):
            for begin, _ in self.intervals(local + timedelta(days=offset)):
                if begin > now:
                    return begin
        return None

    def describe(self) -> str:
        parts = []
        for i, spans in enumerate(self.week):
            if spans:
                text = ", ".join(f"{a:%H:%M}-{'24:00' if b is None else format(b, '%H:%M')}" for a, b in spans)
                parts.append(f"{DAYS[i]} {text}")
        closed = f"; closed on {', '.join(map(str, sorted(self.closed)))}" if self.closed else ""
        return f"{'; '.join(parts)} ({self.zone.key}){closed}"


def _clock(text: str) -> time | None:
    m = _CLOCK.match(text)
    if not m or (m.group(1) == "24" and m.group(2) != "00"):
        raise ValueError(f"time {text!r} is not HH:MM between 00:00 and 24:00")
    return None if m.group(1) == "24" else time(int(m.group(1)), int(m.group(2)))


def _days(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        for name in (first, last or first):
            if name not in DAYS:
                raise ValueError(f"unknown weekday {name!r}")
        a, b = DAYS.index(first), DAYS.index(last or first)
        out.extend(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return out


def parse_week(text: str) -> tuple[tuple[tuple[time, time | None], ...], ...]:
    """`mon-fri 09:00-18:00; sat 09:00-13:00` → intervals per weekday; ValueError names the bad part."""
    week: list[list[tuple[time, time | None]]] = [[] for _ in DAYS]
    # Clauses end at ";" or at a "," between hours and the next weekday ("…18:00, sat …"); spaces are free.
    for clause in filter(None, (c.strip().lower() for c in re.split(r";|(?<=\d)\s*,\s*(?=[a-z])", text))):
        found = re.fullmatch(r"([a-z][a-z\s,-]*?)\s*(\d.*)?", clause)
        if not found:
            raise ValueError(f"{clause!r} does not start with weekdays")
        days, spans = re.sub(r"\s+", "", found.group(1)), found.group(2)
        if not spans:
            raise ValueError(f"{clause!r} has no hours")
        for span in filter(None, re.split(r"[\s,]+", re.sub(r"\s*-\s*", "-", spans))):
            start_text, sep, end_text = span.partition("-")
            if not sep:
                raise ValueError(f"hours {span!r} are not HH:MM-HH:MM")
            start, end = _clock(start_text), _clock(end_text)
            if start is None or (end is not None and end <= start):
                raise ValueError(f"hours {span!r} end before they start")
            for day in _days(days):
                week[day].append((start, end))
    if not any(week):
        raise ValueError("no opening hours given")
    return tuple(tuple(sorted(spans)) for spans in week)
