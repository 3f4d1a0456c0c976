"""Free machine-hours and queue waits, against cases computed by hand (no database)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from microfactory.network.capacity import ANY_MATERIAL, MachineTime, QueuedWork, compute

UTC = ZoneInfo("UTC")
BRUSSELS = ZoneInfo("Europe/Brussels")
# Monday 30 November 2026, 08:00 UTC; the shop opens weekdays 09:00-17:00.
MONDAY_8 = dt.datetime(2026, 11, 30, 8, 0, tzinfo=dt.UTC)
WEEKDAYS_9_TO_5 = [(d, 9 * 60, 17 * 60) for d in range(5)]


def at(day: int, hour: float) -> dt.datetime:
    """Return 30 November 2026 + `day` days, at `hour` UTC."""
    return MONDAY_8.replace(hour=0) + dt.timedelta(days=day, hours=hour)


def hours_of(result, process="fdm_printing", material="PLA"):  # type: ignore[no-untyped-def]
    return [d.hours for d in result.free if d.process == process and d.material == material]


def test_opening_hours_alone_give_eight_hours_a_weekday_and_none_at_the_weekend() -> None:
    result = compute(
        machines=[MachineTime(1, "fdm_printing", frozenset({"PLA"}))],
        queued=[],
        weekly=WEEKDAYS_9_TO_5,
        closures=[],
        tz=UTC,
        now=MONDAY_8,
    )
    assert hours_of(result) == [8, 8, 8, 8, 8, 0, 0]
    assert [d.date.isoformat() for d in result.free][:2] == ["2026-11-30", "2026-12-01"]
    # Nothing queued: the wait is until the shop opens at 09:00.
    assert [(q.process, q.depth, q.wait_hours) for q in result.queue] == [("fdm_printing", 0, 1)]


def test_today_counts_from_now() -> None:
    result = compute(
        machines=[MachineTime(1, "fdm_printing", frozenset({"PLA"}))],
        queued=[],
        weekly=WEEKDAYS_9_TO_5,
        closures=[],
        tz=UTC,
        now=at(0, 13.5),
    )
    assert hours_of(result)[0] == 3.5
    assert result.queue[0].wait_hours == 0


def test_bookings_with_their_buffer_and_maintenance_are_taken_off() -> None:
    machine = MachineTime(
        1,
        "fdm_printing",
        frozenset({"PLA"}),
        busy=(
            (at(0, 10), at(0, 12.5)),  # a booking 10:00-12:00 and its 30 min buffer
            (at(1, 8), at(1, 13)),  # maintenance from before opening to 13:00 on Tuesday
            (at(5, 10), at(5, 12)),  # a booking on Saturday, when the shop is closed
        ),
    )
    result = compute(
        machines=[machine], queued=[], weekly=WEEKDAYS_9_TO_5, closures=[], tz=UTC, now=MONDAY_8
    )
    assert hours_of(result) == [5.5, 4, 8, 8, 8, 0, 0]


def test_work_on_the_machine_uses_its_free_time_from_the_front() -> None:
    # 3 h left of the running job: 09:00-10:00, then after the booking 12:30-14:30.
    machine = MachineTime(
        1, "fdm_printing", frozenset({"PLA"}), busy=((at(0, 10), at(0, 12.5)),), own_work_s=3 * 3600
    )
    result = compute(
        machines=[machine], queued=[], weekly=WEEKDAYS_9_TO_5, closures=[], tz=UTC, now=MONDAY_8
    )
    assert hours_of(result)[:2] == [2.5, 8]
    assert result.queue[0].wait_hours == 6.5  # free from 14:30, 6.5 h after 08:00


def test_queued_jobs_go_to_the_machine_of_their_material_that_comes_free_first() -> None:
    pla = MachineTime(1, "fdm_printing", frozenset({"PLA"}))
    petg = MachineTime(2, "fdm_printing", frozenset({"PETG"}))
    result = compute(
        machines=[pla, petg],
        queued=[
            QueuedWork("fdm_printing", 2 * 3600, "PETG"),
            QueuedWork("fdm_printing", 10 * 3600, "PLA"),  # all of Monday and 2 h of Tuesday
            QueuedWork("fdm_printing", 3600, None),  # any material: PETG's machine is free first
        ],
        weekly=WEEKDAYS_9_TO_5,
        closures=[],
        tz=UTC,
        now=MONDAY_8,
    )
    assert hours_of(result, material="PLA") == [0, 6, 8, 8, 8, 0, 0]
    assert hours_of(result, material="PETG") == [5, 8, 8, 8, 8, 0, 0]
    # Three jobs waiting; the first machine free is PETG's, at 12:00 (4 h after 08:00).
    assert [(q.depth, q.wait_hours) for q in result.queue] == [(3, 4)]


def test_hours_are_summed_per_process_over_the_machines_that_work_the_material() -> None:
    result = compute(
        machines=[
            MachineTime(1, "fdm_printing", frozenset({"PLA", "PETG"})),
            MachineTime(2, "fdm_printing", frozenset({"PLA"})),
            MachineTime(3, "laser_cutting", frozenset()),  # lists no material
            MachineTime(4, "fdm_printing", frozenset({"PLA"}), usable=False),  # disabled
        ],
        queued=[],
        weekly=WEEKDAYS_9_TO_5,
        closures=[],
        tz=UTC,
        now=MONDAY_8,
    )
    assert hours_of(result, material="PLA")[0] == 16
    assert hours_of(result, material="PETG")[0] == 8
    assert hours_of(result, "laser_cutting", ANY_MATERIAL)[0] == 8
    assert len(result.free) == 7 * 3  # one entry per day, process and material
    assert [q.process for q in result.queue] == ["fdm_printing", "laser_cutting"]


def test_a_closure_day_has_no_hours() -> None:
    result = compute(
        machines=[MachineTime(1, "fdm_printing", frozenset({"PLA"}))],
        queued=[],
        weekly=WEEKDAYS_9_TO_5,
        closures=[(dt.date(2026, 12, 1), dt.date(2026, 12, 2))],
        tz=UTC,
        now=MONDAY_8,
    )
    assert hours_of(result) == [8, 0, 0, 8, 8, 0, 0]


def test_queued_work_longer_than_the_week_leaves_nothing_and_a_week_long_wait() -> None:
    machine = MachineTime(1, "cnc_milling", frozenset({"MDF"}), own_work_s=100 * 3600)
    result = compute(
        machines=[machine], queued=[], weekly=WEEKDAYS_9_TO_5, closures=[], tz=UTC, now=MONDAY_8
    )
    assert hours_of(result, "cnc_milling", "MDF") == [0] * 7
    # No free time in the horizon: the wait is at least until its end (Sunday midnight).
    assert result.queue[0].wait_hours == 6 * 24 + 16


def test_the_day_clocks_go_back_has_25_hours_and_opening_hours_stay_local() -> None:
    # Brussels, Saturday 24 October 2026 at local midnight; clocks go back on Sunday the 25th.
    now = dt.datetime(2026, 10, 24, 0, 0, tzinfo=BRUSSELS)
    around_the_clock = compute(
        machines=[MachineTime(1, "fdm_printing", frozenset({"PLA"}))],
        queued=[],
        weekly=[],  # no schedule: open around the clock
        closures=[],
        tz=BRUSSELS,
        now=now,
    )
    assert hours_of(around_the_clock) == [24, 25, 24, 24, 24, 24, 24]
    nine_to_five = compute(
        machines=[MachineTime(1, "fdm_printing", frozenset({"PLA"}))],
        queued=[],
        weekly=[(d, 9 * 60, 17 * 60) for d in range(7)],
        closures=[],
        tz=BRUSSELS,
        now=now,
    )
    assert hours_of(nine_to_five) == [8] * 7
    # Dates are the shop's local days.
    assert nine_to_five.free[1].date == dt.date(2026, 10, 25)


def test_the_day_clocks_go_forward_has_23_hours() -> None:
    now = dt.datetime(2026, 3, 29, 0, 0, tzinfo=BRUSSELS)
    result = compute(
        machines=[MachineTime(1, "fdm_printing", frozenset({"PLA"}))],
        queued=[],
        weekly=[],
        closures=[],
        tz=BRUSSELS,
        now=now,
    )
    assert hours_of(result)[:2] == [23, 24]


def test_subtract_removes_every_covered_part() -> None:
    from microfactory.network.capacity import subtract

    def t(h: float) -> dt.datetime:
        return at(0, h)

    spans = [(t(9), t(12)), (t(13), t(17)), (t(18), t(19))]
    holes = [(t(16), t(18.5)), (t(8), t(9.5)), (t(10), t(11)), (t(11), t(11.5)), (t(20), t(21))]
    assert subtract(spans, holes) == [
        (t(9.5), t(10)),
        (t(11.5), t(12)),
        (t(13), t(16)),
        (t(18.5), t(19)),
    ]
    assert subtract(spans, []) == spans
    assert subtract(spans, [(t(0), t(24))]) == []
