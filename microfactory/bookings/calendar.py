"""iCalendar feeds: a machine's taken time, and a member's own bookings.

Events carry local times with the shop's TZID and a VTIMEZONE built from the tz database, so
calendar apps show 09:00 as 09:00 on both sides of a daylight-saving change.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from zoneinfo import ZoneInfo

import icalendar

from microfactory.bookings.models import Booking, BookingStatus, MaintenanceBlock
from microfactory.machines.models import Machine

PRODID = "-//microfactory//bookings//EN"


def _calendar(name: str) -> icalendar.Calendar:
    cal = icalendar.Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("x-wr-calname", name)
    return cal


def _event(
    uid: str,
    start: dt.datetime,
    end: dt.datetime,
    summary: str,
    tz: ZoneInfo,
    stamp: dt.datetime,
    description: str = "",
    status: str = "CONFIRMED",
) -> icalendar.Event:
    event = icalendar.Event()
    event.add("uid", uid)
    event.add("dtstamp", stamp)
    event.add("dtstart", start.astimezone(tz))
    event.add("dtend", end.astimezone(tz))
    event.add("summary", summary)
    event.add("status", status)
    if description:
        event.add("description", description)
    return event


def machine_feed(
    *,
    machine: Machine,
    bookings: Iterable[Booking],
    blocks: Iterable[MaintenanceBlock],
    tz: ZoneInfo,
    host: str,
    now: dt.datetime,
) -> bytes:
    """Return a machine's calendar: bookings (without names) and maintenance blocks."""
    cal = _calendar(f"{machine.name} · microfactory")
    for b in bookings:
        cal.add_component(_event(f"booking-{b.id}@{host}", b.start_at, b.end_at, "Booked", tz, now))
    for block in blocks:
        cal.add_component(
            _event(
                f"maintenance-{block.id}@{host}",
                block.start_at,
                block.end_at,
                "Maintenance",
                tz,
                now,
                block.reason,
            )
        )
    cal.add_missing_timezones()
    return bytes(cal.to_ical())


def member_feed(
    *,
    username: str,
    bookings: Iterable[Booking],
    machines: Mapping[int, Machine],
    tz: ZoneInfo,
    host: str,
    now: dt.datetime,
) -> bytes:
    """Return a member's calendar: their bookings, cancelled ones marked as such."""
    cal = _calendar(f"{username}'s bookings · microfactory")
    for b in bookings:
        machine = machines.get(b.machine_id)
        name = machine.name if machine else f"machine {b.machine_id}"
        live = b.status not in (BookingStatus.CANCELLED, BookingStatus.NO_SHOW)
        cal.add_component(
            _event(
                f"booking-{b.id}@{host}",
                b.start_at,
                b.end_at,
                name if live else f"{name} ({b.status.value.replace('_', ' ')})",
                tz,
                now,
                b.note,
                "CONFIRMED" if live else "CANCELLED",
            )
        )
    cal.add_missing_timezones()
    return bytes(cal.to_ical())
