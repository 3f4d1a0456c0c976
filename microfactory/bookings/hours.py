"""Opening hours: a weekly schedule in the shop's local time, turned into UTC intervals.

Every local wall-clock time is converted through zoneinfo day by day, so "09:00" stays 09:00
on both sides of a daylight-saving change (07:00 UTC in Paris summer, 08:00 UTC in winter).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from zoneinfo import ZoneInfo

DAY_MINUTES = 24 * 60
Interval = tuple[dt.datetime, dt.datetime]


def local_datetime(day: dt.date, minute: int, tz: ZoneInfo) -> dt.datetime:
    """Return the aware UTC instant of a local wall-clock minute of a day (1440 = next day)."""
    if minute >= DAY_MINUTES:
        day, minute = day + dt.timedelta(days=1), minute - DAY_MINUTES
    local = dt.datetime.combine(day, dt.time(minute // 60, minute % 60), tzinfo=tz)
    return local.astimezone(dt.UTC)


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Merge overlapping or touching intervals."""
    out: list[Interval] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def open_intervals(
    *,
    weekly: Sequence[tuple[int, int, int]],
    closures: Sequence[tuple[dt.date, dt.date]],
    tz: ZoneInfo,
    start: dt.datetime,
    end: dt.datetime,
) -> list[Interval]:
    """Return the UTC intervals the shop is open within [start, end).

    `weekly` holds (weekday, open_minute, close_minute) rows; none means open around the
    clock. `closures` holds inclusive (first_day, last_day) local dates.
    """
    # Work in UTC: Python subtracts two datetimes of the same zone by wall clock, which
    # would make the 25-hour autumn day 24 hours long.
    start, end = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
    first = start.astimezone(tz).date() - dt.timedelta(days=1)
    last = end.astimezone(tz).date()
    spans: list[Interval] = []
    day = first
    while day <= last:
        closed = any(a <= day <= b for a, b in closures)
        if not closed:
            rows = [(o, c) for w, o, c in weekly if w == day.weekday()] if weekly else [(0, 1440)]
            for open_minute, close_minute in rows:
                s, e = local_datetime(day, open_minute, tz), local_datetime(day, close_minute, tz)
                if e > s:
                    spans.append((s, e))
        day += dt.timedelta(days=1)
    clipped = [(max(s, start), min(e, end)) for s, e in merge(spans)]
    return [(s, e) for s, e in clipped if e > s]


def is_open_throughout(
    *,
    weekly: Sequence[tuple[int, int, int]],
    closures: Sequence[tuple[dt.date, dt.date]],
    tz: ZoneInfo,
    start: dt.datetime,
    end: dt.datetime,
) -> bool:
    """Return whether the shop is open for the whole of [start, end)."""
    spans = open_intervals(weekly=weekly, closures=closures, tz=tz, start=start, end=end)
    return len(spans) == 1 and spans[0] == (start.astimezone(dt.UTC), end.astimezone(dt.UTC))


def open_seconds(
    *,
    weekly: Sequence[tuple[int, int, int]],
    closures: Sequence[tuple[dt.date, dt.date]],
    tz: ZoneInfo,
    start: dt.datetime,
    end: dt.datetime,
) -> float:
    """Return how many seconds the shop is open within [start, end)."""
    spans = open_intervals(weekly=weekly, closures=closures, tz=tz, start=start, end=end)
    return sum((e - s).total_seconds() for s, e in spans)


def minute_of_day(text: str) -> int:
    """Parse "HH:MM" (up to "24:00") into minutes after midnight."""
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def format_minute(minute: int) -> str:
    """Format minutes after midnight as "HH:MM"."""
    return f"{minute // 60:02d}:{minute % 60:02d}"


def week_start(moment: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """Return the UTC instant of local Monday 00:00 of the week holding `moment`."""
    local_day = moment.astimezone(tz).date()
    monday = local_day - dt.timedelta(days=local_day.weekday())
    return local_datetime(monday, 0, tz)
