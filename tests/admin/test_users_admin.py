"""Users admin page: role and trust, password resets, admins kept from locking themselves out."""

from __future__ import annotations

from typing import Any

import httpx

from microfactory.accounts import service as account_service
from microfactory.accounts.models import Role
from tests.admin.conftest import CSRF, WebClient


async def test_admin_changes_role_and_trust_but_not_their_own_role_or_access(
    app: Any, web_client: WebClient
) -> None:
    web, admin = await web_client()
    _, target = await web_client(Role.MEMBER, "maker")
    resp = await web.post(
        f"/admin/users/{target.id}", data={"csrf_token": CSRF, "role": "operator", "trusted": "on"}
    )
    assert resp.status_code == 303
    async with app.state.sessionmaker() as session:
        changed = await account_service.get_or_raise(session=session, user_id=target.id)
        assert changed.role is Role.OPERATOR
        assert changed.trusted
    resp = await web.post(f"/admin/users/{target.id}", data={"csrf_token": CSRF, "role": "king"})
    assert resp.status_code == 422
    assert "Role: choose member, operator or admin" in resp.text
    # Their own role and access: refused, with why.
    resp = await web.post(f"/admin/users/{admin.id}", data={"csrf_token": CSRF, "role": "member"})
    assert resp.status_code == 409
    assert "You cannot take away your own admin role" in resp.text
    resp = await web.post(
        f"/admin/users/{admin.id}/active", data={"csrf_token": CSRF, "active": "false"}
    )
    assert resp.status_code == 409
    assert "You cannot disable your own account" in resp.text
    async with app.state.sessionmaker() as session:
        me = await account_service.get_or_raise(session=session, user_id=admin.id)
        assert me.role is Role.ADMIN
        assert me.is_active
    # The refused add form keeps what was typed, in plain words.
    resp = await web.post(
        "/admin/users",
        data={"csrf_token": CSRF, "username": "a b", "password": "short", "full_name": "Ann"},
    )
    assert resp.status_code == 422
    assert "use 2 to 64 letters" in resp.text
    assert "string_pattern" not in resp.text
    assert "should match" not in resp.text
    assert 'value="Ann"' in resp.text


async def test_password_reset_typed_or_generated_once_ends_sessions(
    app: Any, web_client: WebClient, client: httpx.AsyncClient
) -> None:
    web, _ = await web_client()
    theirs, target = await web_client(Role.MEMBER, "forgetful")
    url = f"/admin/users/{target.id}/password"
    resp = await web.post(url, data={"csrf_token": CSRF, "new_password": "short"})
    assert resp.status_code == 422
    assert "New password: write at least 8 characters" in resp.text
    resp = await web.post(url, data={"csrf_token": CSRF, "new_password": "brand-new-pass"})
    assert resp.status_code == 303
    assert (await theirs.get("/machines")).headers["location"].startswith("/login")
    resp = await web.post(url, data={"csrf_token": CSRF, "action": "generate"})
    assert resp.status_code == 200
    assert resp.headers["cache-control"] == "no-store"
    one_time = resp.text.split("<code>", 1)[1].split("</code>", 1)[0]
    assert len(one_time) >= 12
    token = await client.post(
        "/api/v1/auth/token", data={"username": "forgetful", "password": one_time}
    )
    assert token.status_code == 200
    assert one_time not in (await web.get("/admin/users")).text  # shown once


async def test_lockouts_are_listed_and_lifted(app: Any, web_client: WebClient) -> None:
    # The failed logins as the login records them (each real one costs an argon2 hash).
    for _ in range(app.state.settings.login_max_failures_per_username):
        await app.state.login_throttle.failed(username="guesser", address="192.0.2.7")
    web, _ = await web_client()
    page = await web.get("/admin/users")
    assert "Lift lockout of guesser" in page.text
    resp = await web.post(
        "/admin/lockouts/lift", data={"csrf_token": CSRF, "kind": "username", "key": "guesser"}
    )
    assert resp.status_code == 303
    page = await web.get(resp.headers["location"])
    assert "Lockout lifted." in page.text
    assert "Lift lockout of guesser" not in page.text


async def test_refused_opening_hours_say_why_next_to_the_day(web_client: WebClient) -> None:
    web, _ = await web_client(Role.OPERATOR, "opener")
    resp = await web.post(
        "/bookings/admin/hours",
        data={"csrf_token": CSRF, "day0": "nine to five", "day1": "09:00-18:00"},
    )
    assert resp.status_code == 422
    assert "Monday: write intervals like 09:00-18:00" in resp.text
    assert 'value="nine to five" aria-invalid="true" aria-describedby="err-day0"' in resp.text
    assert 'id="err-day0">write intervals like 09:00-18:00</small>' in resp.text
    resp = await web.post("/bookings/admin/hours", data={"csrf_token": CSRF, "day2": "18:00-09:00"})
    assert 'id="err-day2">18:00-09:00: the closing time must be after the opening time' in resp.text
    resp = await web.post("/bookings/admin/hours", data={"csrf_token": CSRF, "day3": "9-17"})
    assert 'id="err-day3">9-17: write times as HH:MM, from 00:00 to 24:00' in resp.text
    assert "^(" not in resp.text  # no regular expression on the page
