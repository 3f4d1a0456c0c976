"""Laying a job into the free hours a report gives per day (hand-computed cases)."""

from __future__ import annotations

import datetime as dt

from microfactory.network.hub.routing import earliest_start

NOW = dt.datetime(2026, 12, 2, 9, 0, tzinfo=dt.UTC)  # Wednesday 09:00 UTC


def plan(free: list[float], job_h: float, wait_h: float = 0.0) -> tuple | None:
    return earliest_start(
        now=NOW,
        wait_h=wait_h,
        free_from="2026-12-02",
        free_hours=",".join(str(h) for h in free),
        timezone="UTC",
        job_h=job_h,
    )


def test_a_job_that_fits_today_starts_now() -> None:
    start, day, finish = plan([8, 10, 10, 10, 10, 10, 10], job_h=3)
    assert (start, day) == (NOW, dt.date(2026, 12, 2))
    assert finish == NOW + dt.timedelta(hours=3)


def test_a_job_longer_than_a_days_free_hours_goes_on_into_the_next_free_day() -> None:
    # 2 h free today, none tomorrow, 10 h on Friday: a 5 h job starts now, finishes Friday 03:00.
    start, day, finish = plan([2, 0, 10, 0, 0, 0, 0], job_h=5)
    assert (start, day) == (NOW, dt.date(2026, 12, 2))
    assert finish == dt.datetime(2026, 12, 4, 3, 0, tzinfo=dt.UTC)


def test_a_fully_booked_week_with_minutes_left_has_no_room_for_a_long_job() -> None:
    assert plan([0.25, 0, 0, 0, 0, 0, 0.5], job_h=3) is None
    assert plan([0.25, 0, 0, 0, 0, 0, 0.5], job_h=0.5) is not None


def test_the_queue_wait_moves_the_start_past_days_it_covers() -> None:
    # A 30 h wait from Wednesday 09:00 ends Thursday 15:00: the job starts then.
    start, day, finish = plan([10, 10, 10, 10, 10, 10, 10], job_h=2, wait_h=30)
    assert start == dt.datetime(2026, 12, 3, 15, 0, tzinfo=dt.UTC)
    assert day == dt.date(2026, 12, 3)
    assert finish == start + dt.timedelta(hours=2)
