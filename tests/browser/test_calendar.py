"""The booking calendar in Chromium: drag to book, a refusal in the server's words, live
updates from the event stream, cancelling from the calendar."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest

from tests.browser.conftest import COUNT_EVENT_SOURCES, DemoServer, api_token, login
from tests.browser.test_job_preview import UNNAMED_CONTROLS

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _drag(page: Any, day: dt.date, start_min: int, end_min: int) -> None:
    """Press, move and release the mouse on the week grid from one shop time to another."""
    cal = page.locator("#calendar")
    slot_min = cal.get_attribute("data-slot-min")
    slot_max = cal.get_attribute("data-slot-max")
    lo = int(slot_min[:2]) * 60 + int(slot_min[3:])
    hi = int(slot_max[:2]) * 60 + int(slot_max[3:])
    column = page.locator(".ec-body .ec-day").nth(day.weekday())  # the week starts on Monday
    box = column.bounding_box()
    # Scroll the page so that the dragged span is on the screen (the mouse acts in the viewport).
    top = box["y"] + (start_min - lo) * box["height"] / (hi - lo)
    page.evaluate("(dy) => window.scrollBy(0, dy)", top - 200)
    box = column.bounding_box()
    per_min = box["height"] / (hi - lo)
    x = box["x"] + box["width"] / 2
    page.mouse.move(x, box["y"] + (start_min - lo) * per_min + 3)
    page.mouse.down()
    page.mouse.move(x, box["y"] + (end_min - lo) * per_min - 3, steps=8)
    page.mouse.up()


def test_member_drag_books_sees_refusals_live_changes_and_cancels(
    browser: Any, page: Any, demo_server: DemoServer
) -> None:
    base = demo_server.url
    admin = api_token(base, "admin", "admin-demo-pass")
    created = httpx.post(
        base + "/api/v1/users",
        json={"username": "calendar2", "password": "calendar2-demo-pass"},
        headers=admin,
        timeout=10,
    )
    assert created.status_code in (201, 409)
    other = api_token(base, "calendar2", "calendar2-demo-pass")
    machines = httpx.get(base + "/api/v1/machines", headers=admin, timeout=10).json()
    printer = next(m for m in machines if m["name"] == "Prusa MK3S #1")
    # The demo shop runs in UTC and opens 08:00-20:00 every day; two days ahead stays clear
    # of the members' cancellation cutoff.
    day = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).date()
    taken = httpx.post(
        base + "/api/v1/bookings",
        json={
            "machine_id": printer["id"],
            "start": f"{day.isoformat()}T14:00:00Z",
            "end": f"{day.isoformat()}T15:00:00Z",
        },
        headers=other,
        timeout=10,
    )
    assert taken.status_code == 201, taken.text

    page.add_init_script(COUNT_EVENT_SOURCES)
    login(page, base, "member", "member-demo-pass")
    page.wait_for_url("**/machines")
    page.goto(f"{base}/bookings/machines/{printer['id']}?start={day.isoformat()}")
    page.locator(".ec-time-grid").wait_for()
    assert page.evaluate("window.__eventSources") == 1  # the calendar's, shared with the badge
    assert "UTC" in page.locator("#zones").inner_text()
    assert page.evaluate(UNNAMED_CONTROLS) == []
    others = page.locator('.ec-event.ev-booking:has-text("Booked")')
    others.first.wait_for()
    assert "calendar2" not in page.locator("#calendar").inner_text()  # others stay anonymous

    # Drag over 10:00-11:00: the booking is made and shown as the member's.
    _drag(page, day, 10 * 60, 11 * 60)
    page.wait_for_function(
        "['flash', 'calendar-error'].some((id) => !document.getElementById(id).hidden)"
    )
    assert page.locator("#calendar-error").is_hidden(), page.locator("#calendar-error").inner_text()
    assert "Booked" in page.locator("#flash").inner_text()
    mine = page.locator(".ec-event.ev-mine")
    mine.first.wait_for()
    assert "10:00" in mine.first.inner_text()
    assert "11:00" in mine.first.inner_text()
    member = api_token(base, "member", "member-demo-pass")
    booked = httpx.get(
        base + "/api/v1/bookings", params={"mine": "true"}, headers=member, timeout=10
    ).json()
    assert any(
        b["machine_id"] == printer["id"] and b["start_at"] == f"{day.isoformat()}T10:00:00Z"
        for b in booked
    )

    # Dragging into someone else's time is refused in the server's words.
    _drag(page, day, 13 * 60 + 30, 14 * 60 + 30)
    error = page.locator("#calendar-error")
    error.wait_for(state="visible")
    assert "already booked" in error.inner_text()
    page.screenshot(path="/tmp/calendar-preview-week.png", full_page=True)

    # Another member books: the calendar shows it without a reload (the event stream).
    page.evaluate("window.__marker = 1")
    late = httpx.post(
        base + "/api/v1/bookings",
        json={
            "machine_id": printer["id"],
            "start": f"{day.isoformat()}T17:00:00Z",
            "end": f"{day.isoformat()}T18:00:00Z",
        },
        headers=other,
        timeout=10,
    )
    assert late.status_code == 201, late.text
    page.locator('.ec-event.ev-booking:has-text("17:00")').wait_for()
    assert page.evaluate("window.__marker") == 1  # the same page: no reload

    # The member cancels their own booking from the calendar.
    mine.first.click()
    page.get_by_role("button", name="Cancel this booking").click()
    page.locator("#flash", has_text="cancelled").wait_for()
    page.locator(".ec-event.ev-mine").wait_for(state="detached")

    # The month view shows the same time; a day in it opens the day view.
    page.get_by_role("button", name="Month", exact=True).click()
    page.locator(".ec-day-grid").wait_for()
    page.get_by_role("button", name="Day", exact=True).click()
    page.locator(".ec-time-grid").wait_for()
