"""Accounts over HTTP: login, tokens, roles, admin user management."""

from __future__ import annotations

import httpx
import pytest

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
