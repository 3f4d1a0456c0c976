"""Bookings in Chromium on the demo shop: book a free time, see it, cancel it; no double booking."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest

from tests.browser.conftest import DemoServer, api_token, login

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_member_books_sees_and_cancels_and_nobody_else_gets_the_slot(
    browser: Any, page: Any, demo_server: DemoServer
) -> None:
    base = demo_server.url
    admin = api_token(base, "admin", "admin-demo-pass")
    created = httpx.post(
        base + "/api/v1/users",
        json={"username": "member2", "password": "member2-demo-pass"},
        headers=admin,
        timeout=10,
    )
    assert created.status_code in (201, 409)
    machines = httpx.get(base + "/api/v1/machines", headers=admin, timeout=10).json()
    printer = next(m for m in machines if m["name"] == "Prusa MK3S #2")
    # The demo shop runs in UTC and opens 08:00-20:00 every day.
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).date()
    slot = f"{tomorrow.isoformat()}T10:00"

    login(page, base, "member", "member-demo-pass")
    page.wait_for_url("**/machines")
    page.get_by_role("link", name="Bookings", exact=True).click()
    page.wait_for_url("**/bookings")
    page.get_by_role("link", name="Prusa MK3S #2").click()
    page.wait_for_url(f"**/bookings/machines/{printer['id']}")
    # The keyboard's way to book (the calendar's drag is in test_calendar.py).
    page.goto(f"{base}/bookings/machines/{printer['id']}?start={tomorrow.isoformat()}")
    page.get_by_text("Book by typing a time").click()
    page.get_by_label("Start (UTC)").fill(slot)
    page.get_by_label("Length").select_option("60")
    page.get_by_role("button", name="Book", exact=True).click()
    page.wait_for_url("**msg=**")
    assert "Booked from" in page.get_by_role("status").inner_text()
    mine = page.locator(".ec-event.ev-mine")
    mine.first.wait_for()
    assert mine.count() == 1
    assert "10:00" in mine.first.inner_text()

    # It is in the member's .ics feed.
    member = api_token(base, "member", "member-demo-pass")
    feed = httpx.post(base + "/api/v1/calendars/feed-token", headers=member, timeout=10).json()
    ics = httpx.get(feed["url"], timeout=10).text
    assert f"DTSTART;TZID=UTC:{tomorrow.strftime('%Y%m%d')}T100000" in ics or (
        f"DTSTART:{tomorrow.strftime('%Y%m%d')}T100000Z" in ics
    )

    # A second member sees the time taken and cannot book it.
    other_ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    other = other_ctx.new_page()
    login(other, base, "member2", "member2-demo-pass")
    other.wait_for_url("**/machines")
    other.goto(f"{base}/bookings/machines/{printer['id']}?start={tomorrow.isoformat()}")
    taken = other.locator(".ec-event.ev-booking")
    taken.first.wait_for()
    assert "10:00" in taken.first.inner_text()
    assert other.locator(".ec-event.ev-mine").count() == 0
    member2 = api_token(base, "member2", "member2-demo-pass")
    start = dt.datetime.fromisoformat(slot).replace(tzinfo=dt.UTC)
    refused = httpx.post(
        base + "/api/v1/bookings",
        json={
            "machine_id": printer["id"],
            "start": (start + dt.timedelta(minutes=30)).isoformat(),
            "end": (start + dt.timedelta(minutes=90)).isoformat(),
        },
        headers=member2,
        timeout=10,
    )
    assert refused.status_code == 409
    assert "already booked" in refused.json()["detail"]
    other_ctx.close()

    # The member sees it in their list and cancels it; the slot is free again.
    page.goto(base + "/bookings")
    row = page.locator("#my-bookings tbody tr", has_text="Prusa MK3S #2")
    assert "booked" in row.inner_text()
    row.get_by_role("button", name="Cancel").click()
    page.wait_for_url("**/bookings?msg=**")
    assert "cancelled" in page.get_by_role("status").inner_text()
    page.goto(f"{base}/bookings/machines/{printer['id']}?start={tomorrow.isoformat()}")
    page.locator("#calendar[data-events-loaded]").wait_for(state="attached")
    assert page.locator(".ec-event.ev-mine").count() == 0
