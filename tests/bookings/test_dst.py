"""Daylight-saving changes: opening hours and iCalendar output stay on local wall-clock time."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import icalendar

from microfactory.bookings import hours
from tests.bookings.conftest import PARIS, Clock, book, paris

DAILY_9_TO_18 = [(d, 9 * 60, 18 * 60) for d in range(7)]


def test_opening_hours_follow_local_time_across_the_spring_change() -> None:
    # Sunday 29 March 2026 Paris moves from UTC+1 to UTC+2 at 02:00.
    before = hours.open_intervals(
        weekly=DAILY_9_TO_18,
        closures=[],
        tz=PARIS,
        start=paris(2026, 3, 28),
        end=paris(2026, 3, 29, 23),
    )
    utc = [(s.astimezone(dt.UTC).hour, e.astimezone(dt.UTC).hour) for s, e in before]
    assert utc == [(8, 17), (7, 16)]  # 09:00-18:00 local both days
    assert all(s.astimezone(PARIS).hour == 9 for s, _ in before)


def test_opening_hours_follow_local_time_across_the_autumn_change() -> None:
    # Sunday 25 October 2026 Paris moves back from UTC+2 to UTC+1 at 03:00; that day is 25 h.
    spans = hours.open_intervals(
        weekly=[(d, 0, 1440) for d in range(7)],
        closures=[],
        tz=PARIS,
        start=paris(2026, 10, 25),
        end=paris(2026, 10, 26),
    )
    assert sum((e - s).total_seconds() for s, e in spans) == 25 * 3600
    assert hours.is_open_throughout(
        weekly=DAILY_9_TO_18,
        closures=[],
        tz=PARIS,
        start=paris(2026, 10, 25, 9),
        end=paris(2026, 10, 25, 18),
    )
    # 08:30 UTC is 09:30 on the Sunday after the change, but 10:30 on the Saturday before.
    sunday = dt.datetime(2026, 10, 25, 8, 0, tzinfo=dt.UTC)
    assert hours.is_open_throughout(
        weekly=DAILY_9_TO_18,
        closures=[],
        tz=PARIS,
        start=sunday,
        end=sunday + dt.timedelta(hours=1),
    )
    assert not hours.is_open_throughout(
        weekly=DAILY_9_TO_18,
        closures=[],
        tz=PARIS,
        start=sunday.replace(hour=7),
        end=sunday.replace(hour=8),
    )


async def test_booking_at_opening_time_on_the_day_of_the_spring_change(
    client: httpx.AsyncClient,
    clock: Clock,
    member: dict[str, str],
    operator: dict[str, str],
    machine: dict[str, Any],
) -> None:
    clock.now = dt.datetime(2026, 3, 27, 12, 0, tzinfo=dt.UTC)
    week = [{"weekday": d, "opens": "09:00", "closes": "18:00"} for d in range(7)]
    await client.put("/api/v1/opening-hours", json={"intervals": week}, headers=operator)
    mid = machine["id"]
    # 07:00 UTC is 08:00 on Saturday (closed) but 09:00 on Sunday (open).
    saturday = dt.datetime(2026, 3, 28, 7, 0, tzinfo=dt.UTC)
    sunday = dt.datetime(2026, 3, 29, 7, 0, tzinfo=dt.UTC)
    refused = await book(client, member, mid, saturday, saturday + dt.timedelta(hours=1))
    assert refused.status_code == 409
    assert refused.json()["rule"] == "opening_hours"
    ok = await book(client, member, mid, sunday, sunday + dt.timedelta(hours=1))
    assert ok.status_code == 201, ok.text


async def test_ical_feeds_keep_local_times_across_the_autumn_change(
    client: httpx.AsyncClient,
    clock: Clock,
    member: dict[str, str],
    machine: dict[str, Any],
) -> None:
    clock.now = dt.datetime(2026, 10, 20, 12, 0, tzinfo=dt.UTC)
    mid = machine["id"]
    for day in (24, 25, 26):  # Saturday before, Sunday of, Monday after the change
        resp = await book(client, member, mid, paris(2026, 10, day, 10), paris(2026, 10, day, 11))
        assert resp.status_code == 201, resp.text
    created = await client.post("/api/v1/calendars/feed-token", headers=member)
    assert created.status_code == 201
    url = created.json()["url"]
    feed = await client.get(url)  # no Authorization header: the token in the URL is enough
    assert feed.status_code == 200
    assert feed.headers["content-type"].startswith("text/calendar")
    text = feed.text
    assert "BEGIN:VTIMEZONE" in text
    assert "TZID:Europe/Paris" in text
    assert text.count("DTSTART;TZID=Europe/Paris:") == 3
    assert "DTSTART;TZID=Europe/Paris:20261024T100000" in text
    assert "DTSTART;TZID=Europe/Paris:20261025T100000" in text
    cal = icalendar.Calendar.from_ical(feed.content)
    starts = sorted(e.decoded("dtstart").astimezone(dt.UTC) for e in cal.walk("VEVENT"))
    assert [s.hour for s in starts] == [8, 9, 9]  # 10:00 local is 08:00 UTC in summer time

    machine_feed = await client.get(f"/api/v1/calendars/machines/{mid}.ics", headers=member)
    assert machine_feed.text.count("SUMMARY:Booked") == 3
    assert "member" not in machine_feed.text.lower().split("x-wr-calname")[0]

    # Revoking the token closes the private feed.
    assert (await client.delete("/api/v1/calendars/feed-token", headers=member)).status_code == 204
    assert (await client.get(url)).status_code == 401
    assert (await client.get("/api/v1/calendars/me.ics?token=cal_nonsense")).status_code == 401
