"""Dashboard pages in-process: calendar booking, bookings list, usage, statement, admin."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx

from microfactory.accounts import service as account_service
from microfactory.accounts.models import Role, TokenKind
from microfactory.accounts.schemas import UserCreate
from tests.bookings.conftest import Clock

CSRF = "test-csrf-token-value"


async def _browser(app: Any, client: httpx.AsyncClient, role: Role, name: str) -> httpx.AsyncClient:
    async with app.state.sessionmaker() as session:
        user = await account_service.create(
            session=session, user_in=UserCreate(username=name, password="pass-word-1", role=role)
        )
        token, _ = await account_service.issue_token(session=session, user=user, kind=TokenKind.WEB)
        await session.commit()
    c = httpx.AsyncClient(transport=client._transport, base_url="http://testserver")
    c.cookies.set("mf_session", token)
    c.cookies.set("mf_csrf", CSRF)
    return c


async def test_member_books_from_the_week_calendar_and_cancels(
    app: Any, client: httpx.AsyncClient, clock: Clock, machine: dict[str, Any]
) -> None:
    web = await _browser(app, client, Role.MEMBER, "webber")
    page = await web.get(f"/bookings/machines/{machine['id']}", params={"start": "2026-12-02"})
    assert page.status_code == 200
    assert 'data-start="2026-12-02T10:00"' in page.text
    resp = await web.post(
        f"/bookings/machines/{machine['id']}",
        data={
            "csrf_token": CSRF,
            "start": "2026-12-02T10:00",
            "minutes": "60",
            "week": "2026-12-02",
        },
    )
    assert resp.status_code == 303, resp.text
    page = await web.get(resp.headers["location"])
    assert 'data-mine="2026-12-02T10:00"' in page.text
    assert 'data-start="2026-12-02T10:00"' not in page.text
    assert "Booked from Wed 02 Dec 10:00" in page.text
    # Booking the same time again shows the rule on the page.
    again = await web.post(
        f"/bookings/machines/{machine['id']}",
        data={
            "csrf_token": CSRF,
            "start": "2026-12-02T10:30",
            "minutes": "30",
            "week": "2026-12-02",
        },
    )
    assert again.status_code == 409
    assert "already booked" in again.text
    listing = await web.get("/bookings")
    assert "Printer A" in listing.text
    assert "Booked: Printer A" in listing.text  # the confirmation in the outbox
    booking_id = listing.text.split('data-booking-id="', 1)[1].split('"', 1)[0]
    cancel = await web.post(f"/bookings/{booking_id}/cancel", data={"csrf_token": CSRF})
    assert cancel.status_code == 303
    assert "cancelled" in (await web.get(cancel.headers["location"])).text
    no_csrf = await web.post(f"/bookings/{booking_id}/cancel", data={})
    assert no_csrf.status_code == 403
    feed = await web.post("/bookings/feed", data={"csrf_token": CSRF, "action": "new"})
    assert feed.status_code == 200  # shown in the body, never in a URL
    assert "/api/v1/calendars/me.ics?token=cal_" in feed.text
    await web.aclose()


async def test_usage_statement_and_admin_pages_render(
    app: Any, client: httpx.AsyncClient, clock: Clock, machine: dict[str, Any]
) -> None:
    member = await _browser(app, client, Role.MEMBER, "viewer")
    usage = await member.get("/usage")
    assert usage.status_code == 200
    assert "<svg" in usage.text
    assert "Utilisation of Printer A" in usage.text
    statement = await member.get("/statement")
    assert statement.status_code == 200
    assert "Statement 2026-12" in statement.text
    assert (await member.get("/bookings/admin")).status_code == 403
    staff = await _browser(app, client, Role.OPERATOR, "staffer")
    admin = await staff.get("/bookings/admin")
    assert admin.status_code == 200
    saved = await staff.post(
        "/bookings/admin/hours",
        data={"csrf_token": CSRF, **{f"day{d}": "09:00-12:00, 13:00-18:00" for d in range(7)}},
    )
    assert saved.status_code == 303
    hours = (await client.get("/api/v1/opening-hours", headers={"Cookie": ""})).status_code
    assert hours == 401
    bad = await staff.post(
        "/bookings/admin/hours", data={"csrf_token": CSRF, "day0": "nine to five"}
    )
    assert bad.status_code == 422
    block = await staff.post(
        "/bookings/admin/maintenance",
        data={
            "csrf_token": CSRF,
            "machine_id": str(machine["id"]),
            "start": "2026-12-03T09:00",
            "end": "2026-12-03T12:00",
            "reason": "belts",
        },
    )
    assert block.status_code == 303
    assert "belts" in (await staff.get("/bookings/admin")).text
    await member.aclose()
    await staff.aclose()


async def test_machine_cards_say_booked_now_and_when_the_machine_is_free(
    app: Any,
    client: httpx.AsyncClient,
    clock: Any,
    machine: dict[str, Any],
    member: dict[str, str],
    operator: dict[str, str],
) -> None:
    from tests.bookings.conftest import book, paris

    # Two back-to-back bookings, 10:00-11:00 (the member's) and 11:00-12:00 (the operator's).
    for who, start in ((member, 10), (operator, 11)):
        resp = await book(
            client, who, machine["id"], paris(2026, 12, 1, start), paris(2026, 12, 1, start + 1)
        )
        assert resp.status_code == 201, resp.text
    web = await _browser(app, client, Role.OPERATOR, "card-reader")

    def card(page: str) -> str:
        return page.split(f'data-machine-id="{machine["id"]}"', 1)[1].split("</article>", 1)[0]

    early = card((await web.get("/machines")).text)
    assert "Free now, next booked Tue 01 Dec 10:00" in early
    assert f'<a href="/bookings/machines/{machine["id"]}">Calendar</a>' in early
    clock.now = paris(2026, 12, 1, 10, 30).astimezone(dt.UTC)
    during = card((await web.get("/machines")).text)
    assert "Booked now, free at Tue 01 Dec 12:00" in during  # both bookings, one stretch
