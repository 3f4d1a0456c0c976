"""Dashboard pages in-process: calendar booking, bookings list, usage, statement, admin."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest

from microfactory.accounts import service as account_service
from microfactory.accounts.models import Role, TokenKind
from microfactory.accounts.schemas import UserCreate
from tests.bookings.conftest import BookingEvents, Clock

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
    assert 'data-date="2026-12-02"' in page.text  # the calendar opens on the asked week
    events_url = f"/bookings/machines/{machine['id']}/events"
    week = {"start": "2026-11-30T00:00:00", "end": "2026-12-07T00:00:00"}

    async def mine_at(start: str) -> list[dict[str, Any]]:
        resp = await web.get(events_url, params=week)
        assert resp.status_code == 200, resp.text
        return [
            e for e in resp.json() if e["start"] == start and e["extendedProps"]["kind"] == "mine"
        ]

    assert await mine_at("2026-12-02T10:00:00") == []
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
    assert "Booked from Wed 02 Dec 10:00" in page.text
    (event,) = await mine_at("2026-12-02T10:00:00")
    assert event["end"] == "2026-12-02T11:00:00"
    assert event["extendedProps"]["can_cancel"] is True
    # Another member sees the time taken, without whose it is.
    other = await _browser(app, client, Role.MEMBER, "webber-two")
    seen = (await other.get(events_url, params=week)).json()
    (taken,) = [e for e in seen if e["start"] == "2026-12-02T10:00:00"]
    assert taken["title"] == "Booked"
    assert taken["extendedProps"]["booking_id"] is None
    assert "webber" not in str(taken)
    bad = await other.get(events_url, params={"start": "2026-11-30", "end": "2027-06-01"})
    assert bad.status_code == 422
    assert "62 days" in bad.text
    await other.aclose()
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


async def test_changes_of_machine_time_are_announced_on_the_live_stream(
    app: Any,
    client: httpx.AsyncClient,
    clock: Clock,
    machine: dict[str, Any],
    member: dict[str, str],
    operator: dict[str, str],
) -> None:
    from tests.bookings.conftest import book, paris

    stream = BookingEvents(app.state.fleet)

    pending = await stream.expect()
    resp = await book(client, member, machine["id"], paris(2026, 12, 2, 10), paris(2026, 12, 2, 11))
    assert resp.status_code == 201, resp.text
    assert await pending == ("booking", machine["id"], {})
    # A refused booking changes nothing and says nothing; a closure concerns every machine.
    refused = await book(
        client, member, machine["id"], paris(2026, 12, 2, 10), paris(2026, 12, 2, 11)
    )
    assert refused.status_code == 409
    pending = await stream.expect()
    closed = await client.post(
        "/api/v1/closures",
        json={"first_day": "2026-12-03", "last_day": "2026-12-03", "reason": "Holiday"},
        headers=operator,
    )
    assert closed.status_code == 201, closed.text
    assert await pending == ("booking", 0, {})
    await stream.close()
    # The calendar shows the closure as its own kind of time, apart from out-of-hours time.
    web = await _browser(app, client, Role.MEMBER, "closure-viewer")
    events = (
        await web.get(
            f"/bookings/machines/{machine['id']}/events",
            params={"start": "2026-12-03", "end": "2026-12-04"},
        )
    ).json()
    kinds = {e["extendedProps"]["kind"] for e in events}
    assert "closure" in kinds
    (closure,) = [e for e in events if e["extendedProps"]["kind"] == "closure"]
    assert closure["title"] == "Holiday"
    assert closure["display"] == "background"
    await web.aclose()


async def test_a_booking_reaches_the_streams_of_the_other_web_workers(
    app: Any,
    client: httpx.AsyncClient,
    clock: Clock,
    machine: dict[str, Any],
    member: dict[str, str],
) -> None:
    from microfactory.app import create_app
    from tests.bookings.conftest import book, paris

    settings = app.state.settings
    if not settings.is_postgresql:
        pytest.skip("several processes share PostgreSQL only (SQLite is one process)")
    other = create_app(settings)  # another web worker on the same database
    async with other.router.lifespan_context(other):
        stream = BookingEvents(other.state.fleet)

        pending = await stream.expect()
        resp = await book(
            client, member, machine["id"], paris(2026, 12, 2, 10), paris(2026, 12, 2, 11)
        )
        assert resp.status_code == 201, resp.text
        assert await pending == ("booking", machine["id"], {})
        await stream.close()
