"""Accounts over HTTP: login, tokens, roles, admin user management."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import threading
from typing import Any

import httpx
import pytest

from microfactory.accounts import security
from microfactory.accounts.models import ApiToken
from microfactory.config import Settings
from tests.conftest import UserFactory


async def login(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await client.post(
        "/api/v1/auth/token", data={"username": username, "password": password}
    )


async def test_login_returns_a_working_bearer_token(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    await make_user("member", username="maria", password="maria-pass-1")
    resp = await login(client, "maria", "maria-pass-1")
    assert resp.status_code == 200
    body = resp.json()
    assert body["token_type"] == "bearer"
    me = await client.get(
        "/api/v1/users/me", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert me.status_code == 200
    assert me.json()["username"] == "maria"
    assert me.json()["role"] == "member"
    assert "password_hash" not in me.json()


async def test_wrong_password_and_unknown_user_get_the_same_401(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    await make_user("member", username="maria", password="maria-pass-1")
    wrong = await login(client, "maria", "nope-nope-nope")
    unknown = await login(client, "nobody", "nope-nope-nope")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == {"detail": "incorrect username or password"}


async def test_bad_or_missing_token_is_401(client: httpx.AsyncClient) -> None:
    resp = await client.get("/api/v1/users/me", headers={"Authorization": "Bearer mf_bogus"})
    assert resp.status_code == 401
    assert resp.json()["detail"] == "invalid, expired or revoked token"
    assert (await client.get("/api/v1/users/me")).status_code == 401


async def test_personal_tokens_are_listed_without_value_and_revocable(
    client: httpx.AsyncClient, member: dict[str, str]
) -> None:
    created = await client.post("/api/v1/users/me/tokens", json={"name": "slicer"}, headers=member)
    assert created.status_code == 201
    token = created.json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/api/v1/users/me", headers=headers)).status_code == 200
    listed = await client.get("/api/v1/users/me/tokens", headers=member)
    assert all("token" not in t for t in listed.json())
    assert "slicer" in [t["name"] for t in listed.json()]
    revoked = await client.delete(f"/api/v1/users/me/tokens/{created.json()['id']}", headers=member)
    assert revoked.status_code == 200
    assert (await client.get("/api/v1/users/me", headers=headers)).status_code == 401


async def test_admin_creates_lists_and_disables_users(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    resp = await client.post(
        "/api/v1/users",
        json={"username": "otto", "password": "otto-pass-1", "role": "operator"},
        headers=admin,
    )
    assert resp.status_code == 201
    user_id = resp.json()["id"]
    names = [u["username"] for u in (await client.get("/api/v1/users", headers=admin)).json()]
    assert "otto" in names
    token = (await login(client, "otto", "otto-pass-1")).json()["access_token"]
    disabled = await client.patch(
        f"/api/v1/users/{user_id}", json={"is_active": False}, headers=admin
    )
    assert disabled.json()["is_active"] is False
    # Disabling revokes existing tokens and refuses new logins.
    me = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 401
    assert (await login(client, "otto", "otto-pass-1")).status_code == 401


async def test_duplicate_username_is_409(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    body = {"username": "dup", "password": "dup-pass-12"}
    assert (await client.post("/api/v1/users", json=body, headers=admin)).status_code == 201
    again = await client.post("/api/v1/users", json=body, headers=admin)
    assert again.status_code == 409
    assert "already taken" in again.json()["detail"]


@pytest.mark.parametrize("role", ["member", "operator"])
async def test_non_admins_cannot_manage_users(
    client: httpx.AsyncClient, make_user: UserFactory, role: str
) -> None:
    _, headers = await make_user(role)
    assert (await client.get("/api/v1/users", headers=headers)).status_code == 403
    resp = await client.post(
        "/api/v1/users", json={"username": "x1", "password": "xxxxxxxx1"}, headers=headers
    )
    assert resp.status_code == 403
    assert "admin" in resp.json()["detail"]


async def test_short_password_is_422(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    resp = await client.post(
        "/api/v1/users", json={"username": "shorty", "password": "short"}, headers=admin
    )
    assert resp.status_code == 422


# -- logins off the event loop, throttled --------------------------------------------------

CSRF = "test-csrf-token-value"


async def test_a_slow_password_check_does_not_stall_other_requests(
    app: Any, client: httpx.AsyncClient, make_user: UserFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While argon2 works on a login, /healthz is still answered (the loop is not blocked),
    and the waiting login holds no database connection (it would starve the pool)."""
    await make_user("member", username="maria", password="maria-pass-1")
    gate = threading.Event()
    entered = threading.Event()
    real_verify = security.verify_password

    def slow_verify(password_hash: str | None, password: str) -> bool:
        entered.set()
        gate.wait(timeout=10)  # released by the test once /healthz has been answered
        return real_verify(password_hash, password)

    monkeypatch.setattr(security, "verify_password", slow_verify)
    attempt = asyncio.create_task(login(client, "maria", "wrong-wrong-1"))
    assert await asyncio.to_thread(entered.wait, 10)
    health = await client.get("/healthz")
    assert health.status_code == 200
    assert not attempt.done(), "the login finished first: the password check blocked the loop"
    assert app.state.engine.sync_engine.pool.checkedout() == 0
    gate.set()
    assert (await attempt).status_code == 401


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Small limits, so that a few wrong passwords trigger the lockouts."""
    return settings.model_copy(
        update={
            "login_max_failures_per_username": 3,
            "login_max_failures_per_address": 6,
            "login_refusal_delay_s": 0.05,
        }
    )


async def test_failed_logins_lock_out_the_username_with_429_and_retry_after(
    client: httpx.AsyncClient, make_user: UserFactory, caplog: pytest.LogCaptureFixture
) -> None:
    await make_user("member", username="maria", password="maria-pass-1")
    caplog.set_level(logging.INFO, logger="microfactory.accounts")
    for _ in range(3):
        assert (await login(client, "maria", "guess-guess-1")).status_code == 401
    # Even the right password is refused now, and no password is checked.
    locked = await login(client, "maria", "maria-pass-1")
    assert locked.status_code == 429
    retry = int(locked.headers["Retry-After"])
    assert 0 < retry <= 15 * 60
    assert "too many failed logins" in locked.json()["detail"]
    assert locked.json()["retry_after_s"] == retry
    # Another username from the same address is not locked out (yet).
    await make_user("member", username="otto", password="otto-pass-12")
    assert (await login(client, "otto", "otto-pass-12")).status_code == 200
    # The events are logged, without the passwords tried.
    for _ in range(3):
        assert (await login(client, "maria", "maria-pass-1")).status_code == 429
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("login_failed") == 3
    assert events.count("login_locked_out") == 1  # once per lockout, not per attempt
    assert "guess-guess-1" not in caplog.text
    assert "maria-pass-1" not in caplog.text


async def test_failed_logins_lock_out_the_client_address(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    await make_user("member", username="maria", password="maria-pass-1")
    for n in range(6):  # six different usernames, one address
        assert (await login(client, f"nobody{n}", "guess-guess-1")).status_code == 401
    resp = await login(client, "maria", "maria-pass-1")
    assert resp.status_code == 429
    assert int(resp.headers["Retry-After"]) > 0
    assert "too many failed logins" in resp.json()["detail"]
    # The dashboard's form is refused from that address too, with a page that says why.
    page = await client.post("/login", data={"username": "maria", "password": "maria-pass-1"})
    assert page.status_code == 429
    assert page.headers["content-type"].startswith("text/html")
    assert "too many failed logins" in page.text


async def test_a_successful_login_clears_the_usernames_failures(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    await make_user("member", username="maria", password="maria-pass-1")
    for _ in range(2):
        assert (await login(client, "maria", "guess-guess-1")).status_code == 401
    assert (await login(client, "maria", "maria-pass-1")).status_code == 200
    for _ in range(2):
        assert (await login(client, "maria", "guess-guess-1")).status_code == 401
    assert (await login(client, "maria", "maria-pass-1")).status_code == 200


async def test_admin_sees_and_lifts_a_lockout(
    client: httpx.AsyncClient, make_user: UserFactory, admin: dict[str, str]
) -> None:
    await make_user("member", username="maria", password="maria-pass-1")
    _, member_headers = await make_user("member")
    for _ in range(3):
        await login(client, "maria", "guess-guess-1")
    assert (await client.get("/api/v1/auth/lockouts", headers=member_headers)).status_code == 403
    listed = (await client.get("/api/v1/auth/lockouts", headers=admin)).json()
    assert [(lk["kind"], lk["key"], lk["failures"]) for lk in listed] == [("username", "maria", 3)]
    assert listed[0]["retry_after_s"] > 0
    denied = await client.delete("/api/v1/auth/lockouts/username/maria", headers=member_headers)
    assert denied.status_code == 403
    assert (await login(client, "maria", "maria-pass-1")).status_code == 429
    lifted = await client.delete("/api/v1/auth/lockouts/username/maria", headers=admin)
    assert lifted.status_code == 200
    assert lifted.json()["was_locked_out"] is True
    assert (await client.get("/api/v1/auth/lockouts", headers=admin)).json() == []
    assert (await login(client, "maria", "maria-pass-1")).status_code == 200


async def test_dashboard_login_form_is_throttled_and_the_admin_page_lifts_it(
    app: Any, client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    await make_user("member", username="maria", password="maria-pass-1")
    browser = httpx.AsyncClient(transport=client._transport, base_url="http://testserver")
    browser.cookies.set("mf_csrf", CSRF)
    form = {"username": "maria", "password": "guess-guess-1", "csrf_token": CSRF, "next": "/"}
    for _ in range(3):
        page = await browser.post("/login", data=form)
        assert page.status_code == 401
        assert 'value="maria"' in page.text  # the form keeps what was typed
    page = await browser.post("/login", data={**form, "password": "maria-pass-1"})
    assert page.status_code == 429
    assert int(page.headers["Retry-After"]) > 0
    assert "too many failed logins" in page.text
    # An admin sees the lockout on the users page and lifts it there.
    await make_user("admin", username="boss", password="boss-pass-12")
    admin_browser = httpx.AsyncClient(transport=client._transport, base_url="http://testserver")
    admin_browser.cookies.set("mf_csrf", CSRF)
    ok = await admin_browser.post(
        "/login", data={"username": "boss", "password": "boss-pass-12", "csrf_token": CSRF}
    )
    assert ok.status_code == 303
    users_page = await admin_browser.get("/admin/users")
    assert "Lift lockout of maria" in users_page.text
    lifted = await admin_browser.post(
        "/admin/lockouts/lift", data={"kind": "username", "key": "maria", "csrf_token": CSRF}
    )
    assert lifted.status_code == 303
    assert "Lift lockout of maria" not in (await admin_browser.get("/admin/users")).text
    page = await browser.post("/login", data={**form, "password": "maria-pass-1"})
    assert page.status_code == 303


# -- personal tokens: optional expiry, last use --------------------------------------------


async def test_personal_tokens_expire_when_asked_and_show_their_last_use(
    app: Any, client: httpx.AsyncClient, member: dict[str, str]
) -> None:
    made = await client.post(
        "/api/v1/users/me/tokens", json={"name": "slicer", "expires_in_days": 7}, headers=member
    )
    assert made.status_code == 201
    body = made.json()
    expires = dt.datetime.fromisoformat(body["expires_at"])
    assert dt.timedelta(days=6, hours=23) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(7)
    assert body["last_used_at"] is None
    headers = {"Authorization": f"Bearer {body['token']}"}
    assert (await client.get("/api/v1/users/me", headers=headers)).status_code == 200
    listed = {
        t["id"]: t for t in (await client.get("/api/v1/users/me/tokens", headers=member)).json()
    }
    used = listed[body["id"]]
    assert used["last_used_at"] is not None
    assert used["last_used_from"] == "127.0.0.1"
    # Past its expiry the token no longer works.
    async with app.state.sessionmaker() as session:
        record = await session.get(ApiToken, body["id"])
        assert record is not None
        record.expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        await session.commit()
    expired = await client.get("/api/v1/users/me", headers=headers)
    assert expired.status_code == 401
    # Without an expiry a token lasts until revoked.
    forever = await client.post("/api/v1/users/me/tokens", json={"name": "ci"}, headers=member)
    assert forever.json()["expires_at"] is None


async def test_dashboard_token_page_makes_shows_once_and_revokes(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    await make_user("member", username="maria", password="maria-pass-1")
    browser = httpx.AsyncClient(transport=client._transport, base_url="http://testserver")
    browser.cookies.set("mf_csrf", CSRF)
    await browser.post(
        "/login", data={"username": "maria", "password": "maria-pass-1", "csrf_token": CSRF}
    )
    bad = await browser.post(
        "/account/tokens", data={"csrf_token": CSRF, "name": "x", "expires_in_days": "0"}
    )
    assert bad.status_code == 422
    assert 'value="x"' in bad.text  # the form keeps what was typed
    made = await browser.post(
        "/account/tokens", data={"csrf_token": CSRF, "name": "printer", "expires_in_days": "30"}
    )
    assert made.status_code == 201
    assert made.headers["cache-control"] == "no-store"
    match = re.search(r'<code id="new-token">(mf_[^<]+)</code>', made.text)
    assert match is not None
    token = match.group(1)
    assert (
        await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    ).status_code == 200
    page = await browser.get("/account/tokens")
    assert token not in page.text  # shown once
    row = page.text.split('data-token-id="', 1)[1]
    assert "from 127.0.0.1" in row.split("</tr>", 1)[0]
    token_id = row.split('"', 1)[0]
    revoked = await browser.post(f"/account/tokens/{token_id}/revoke", data={"csrf_token": CSRF})
    assert revoked.status_code == 303
    assert (
        await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    ).status_code == 401
