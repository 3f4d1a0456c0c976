"""Refused dashboard forms: a page with the message, the typed values kept; unknown URLs too."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from microfactory.accounts.models import Role
from tests.bookings.conftest import Clock
from tests.bookings.test_pages import CSRF, _browser
from tests.conftest import UserFactory


async def test_refused_maintenance_block_keeps_what_was_typed(
    app: Any, client: httpx.AsyncClient, clock: Clock, machine: dict[str, Any]
) -> None:
    web = await _browser(app, client, Role.OPERATOR, "keeper")
    resp = await web.post(
        "/bookings/admin/maintenance",
        data={
            "csrf_token": CSRF,
            "machine_id": str(machine["id"]),
            "start": "2026-12-03T12:00",
            "end": "2026-12-03T10:00",
            "reason": "new belts <b>",
        },
    )
    assert resp.status_code == 422
    assert resp.headers["content-type"].startswith("text/html")
    assert "end must be after start" in resp.text
    assert 'name="start" step="900" value="2026-12-03T12:00"' in resp.text
    assert 'name="end" step="900" value="2026-12-03T10:00"' in resp.text
    assert 'value="new belts &lt;b&gt;"' in resp.text  # kept, and escaped
    assert f'<option value="{machine["id"]}" selected>' in resp.text
    # The closure form, refused by nothing here, stays empty.
    assert 'name="first_day" value=""' in resp.text


async def test_refused_opening_hours_keep_what_was_typed(
    app: Any, client: httpx.AsyncClient, clock: Clock
) -> None:
    web = await _browser(app, client, Role.OPERATOR, "hours")
    resp = await web.post(
        "/bookings/admin/hours", data={"csrf_token": CSRF, "day0": "nine to five"}
    )
    assert resp.status_code == 422
    assert 'name="day0" value="nine to five"' in resp.text


async def test_certification_expiry_past_year_9999_is_a_page_not_a_500(
    app: Any,
    client: httpx.AsyncClient,
    clock: Clock,
    machine: dict[str, Any],
    make_user: UserFactory,
) -> None:
    web = await _browser(app, client, Role.OPERATOR, "certifier")
    trainee, _ = await make_user("member", username="trainee")
    resp = await web.post(
        "/bookings/admin/certifications",
        data={
            "csrf_token": CSRF,
            "user_id": str(trainee.id),
            "scope": f"machine:{machine['id']}",
            "expires": "9999-12-31",
        },
    )
    assert resp.status_code == 422, resp.text
    assert 'name="expires" value="9999-12-31"' in resp.text
    assert f'<option value="{trainee.id}" selected>trainee</option>' in resp.text


async def test_form_field_of_the_wrong_type_is_a_page(
    app: Any, client: httpx.AsyncClient, clock: Clock
) -> None:
    web = await _browser(app, client, Role.OPERATOR, "typo")
    resp = await web.post(
        "/bookings/admin/maintenance",
        data={"csrf_token": CSRF, "machine_id": "three", "start": "x", "end": "y"},
    )
    assert resp.status_code == 422
    assert resp.headers["content-type"].startswith("text/html")
    # Plain words next to the field, not a Pydantic dump; what was typed stays.
    assert '<small class="field-error" id="err-machine_id">write a whole number' in resp.text
    assert "Input should be" not in resp.text
    assert '"detail"' not in resp.text
    assert 'name="start" aria-invalid' not in resp.text


async def test_a_quota_that_is_not_a_number_is_said_in_plain_words_next_to_it(
    app: Any, client: httpx.AsyncClient, clock: Clock
) -> None:
    web = await _browser(app, client, Role.OPERATOR, "quota-typo")
    resp = await web.post(
        "/bookings/admin/quotas",
        data={"csrf_token": CSRF, "kind": "fdm_printer", "hours_per_week": "abc"},
    )
    assert resp.status_code == 422
    assert "could not convert" not in resp.text
    assert 'name="hours_per_week" aria-invalid="true" aria-describedby="err-hours_per_week"' in (
        resp.text
    )
    assert "Hours per week: write a number, such as 2.5" in resp.text
    assert 'value="abc"' in resp.text
    assert '<option value="fdm_printer" selected>' in resp.text


@pytest.mark.parametrize("path", ["/no-such-page", "/bookings/nowhere/at/all"])
async def test_unknown_dashboard_url_is_a_page(
    app: Any, client: httpx.AsyncClient, path: str
) -> None:
    web = await _browser(app, client, Role.MEMBER, "lost")
    resp = await web.get(path)
    assert resp.status_code == 404
    assert resp.headers["content-type"].startswith("text/html")
    assert f"there is no page at {path}" in resp.text


async def test_unknown_api_url_stays_json(client: httpx.AsyncClient) -> None:
    resp = await client.get("/api/v1/no-such-thing")
    assert resp.status_code == 404
    assert resp.json() == {"detail": "Not Found"}


async def test_method_not_allowed_lists_every_method_of_the_path(
    client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    resp = await client.request("OPTIONS", "/api/v1/machines", headers=operator)
    assert resp.status_code == 405
    assert {m.strip() for m in resp.headers["allow"].split(",")} >= {"GET", "POST"}
    # A word where an id goes is not the id route: /bookings/availability has only GET.
    resp = await client.delete("/api/v1/bookings/availability", headers=operator)
    assert resp.status_code == 405
    assert "DELETE" not in resp.headers["allow"]


async def test_openapi_documents_the_error_shapes(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    op = doc["paths"]["/api/v1/machines/{machine_id}"]["delete"]
    assert {"401", "403", "404", "409", "422"} <= set(op["responses"])
    detail = doc["components"]["schemas"]["Error"]["properties"]["detail"]
    assert {s.get("type") for s in detail["anyOf"]} == {"string", "array"}
    usage = doc["paths"]["/api/v1/usage"]["get"]["responses"]["200"]["content"]
    assert "text/csv" in usage


@pytest.mark.parametrize("start", ["9999-12-31T23:30", "0001-01-01T00:00"])
async def test_booking_at_the_ends_of_the_calendar_is_a_page(
    app: Any, client: httpx.AsyncClient, clock: Clock, machine: dict[str, Any], start: str
) -> None:
    web = await _browser(app, client, Role.MEMBER, "timetraveller")
    resp = await web.post(
        f"/bookings/machines/{machine['id']}",
        data={"csrf_token": CSRF, "start": start, "minutes": "60"},
    )
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("text/html")
    assert "year" in resp.text
    week = await web.get(f"/bookings/machines/{machine['id']}", params={"start": start[:10]})
    assert week.status_code == 200, week.text


@pytest.mark.parametrize("path", ["/usage?month=9999-12", "/statement?month=0001-01"])
async def test_month_pages_at_the_ends_of_the_calendar_are_pages(
    app: Any, client: httpx.AsyncClient, clock: Clock, path: str
) -> None:
    web = await _browser(app, client, Role.MEMBER, "historian")
    resp = await web.get(path)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("text/html")
    assert "must be in the years 1970 to 2999" in resp.text


async def test_a_certification_valid_until_a_day_shows_that_day(
    app: Any,
    client: httpx.AsyncClient,
    clock: Clock,
    machine: dict[str, Any],
    make_user: UserFactory,
) -> None:
    web = await _browser(app, client, Role.OPERATOR, "trainer")
    trainee, _ = await make_user("member", username="apprentice")
    resp = await web.post(
        "/bookings/admin/certifications",
        data={
            "csrf_token": CSRF,
            "user_id": str(trainee.id),
            "scope": f"machine:{machine['id']}",
            "expires": "2027-06-30",
        },
        follow_redirects=True,
    )
    assert resp.status_code == 200, resp.text
    row = next(line for line in resp.text.splitlines() if ">apprentice</td>" in line)
    assert "<td>2027-06-30</td>" in row  # as typed, not the exclusive end 2027-07-01
    assert "2027-07-01" not in row


async def test_maintenance_over_bookings_asks_with_two_buttons_then_cancels_them(
    app: Any, client: httpx.AsyncClient, clock: Clock, machine: dict[str, Any], member: Any
) -> None:
    from tests.bookings.conftest import book, paris

    booked = await book(
        client, member, machine["id"], paris(2026, 12, 3, 10), paris(2026, 12, 3, 11)
    )
    assert booked.status_code == 201, booked.text
    web = await _browser(app, client, Role.OPERATOR, "mechanic")
    form = {
        "csrf_token": CSRF,
        "machine_id": str(machine["id"]),
        "start": "2026-12-03T09:00",
        "end": "2026-12-03T12:00",
        "reason": "new belts",
    }
    asked = await web.post("/bookings/admin/maintenance", data=form)
    assert asked.status_code == 409
    assert "1 booking overlaps this block." in asked.text
    assert "on_conflict" not in asked.text.split('role="alert"')[1].split("</p>")[0]
    assert 'name="on_conflict" value="cancel">Cancel it and tell the member</button>' in asked.text
    assert 'name="on_conflict" value="keep">Keep it</button>' in asked.text
    assert 'value="new belts"' in asked.text  # what was typed is kept

    done = await web.post("/bookings/admin/maintenance", data={**form, "on_conflict": "cancel"})
    assert done.status_code == 303
    mine = await client.get(f"/api/v1/bookings/{booked.json()['id']}", headers=member)
    assert mine.json()["status"] == "cancelled"
