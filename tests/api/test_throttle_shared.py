"""On PostgreSQL the failed-login limit holds across web workers, not once per worker.

Two app instances on one database stand for two `serve --workers` processes: failures made
through either count towards one limit, either lists the lockout, and lifting it on one
lifts it on both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from microfactory.accounts import service as account_service
from microfactory.accounts.models import Role, TokenKind
from microfactory.accounts.schemas import UserCreate
from microfactory.app import create_app
from microfactory.config import Settings
from tests.conftest import _truncate

pytestmark = pytest.mark.postgres


@pytest.fixture
async def two_workers(
    postgresql_database: str, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient, dict[str, str]]]:
    _truncate(postgresql_database)
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=postgresql_database,
        log_json=False,
        run_supervisors=False,
        login_max_failures_per_username=4,
        login_max_failures_per_address=100,
        login_refusal_delay_s=0,
    )
    apps = [create_app(settings), create_app(settings)]
    async with apps[0].router.lifespan_context(apps[0]), apps[1].router.lifespan_context(apps[1]):
        async with apps[0].state.sessionmaker() as session:
            for name, role in (("ada", Role.MEMBER), ("root", Role.ADMIN)):
                user = await account_service.create(
                    session=session,
                    user_in=UserCreate(username=name, password="right-pass-1", role=role),
                )
            token, _ = await account_service.issue_token(
                session=session, user=user, kind=TokenKind.PERSONAL
            )
            await session.commit()
        clients = [
            httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://t")
            for a in apps
        ]
        async with clients[0], clients[1]:
            yield clients[0], clients[1], {"Authorization": f"Bearer {token}"}


async def _login(client: httpx.AsyncClient, password: str) -> httpx.Response:
    return await client.post("/api/v1/auth/token", data={"username": "ada", "password": password})


async def test_the_username_limit_holds_across_two_workers(
    two_workers: tuple[httpx.AsyncClient, httpx.AsyncClient, dict[str, str]],
) -> None:
    a, b, admin = two_workers
    # Four wrong passwords, alternating between the workers: the limit is four in all.
    for client in (a, b, a, b):
        assert (await _login(client, "wrong")).status_code == 401
    for client in (a, b):
        refused = await _login(client, "right-pass-1")
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) > 0

    # Either worker shows the lockout; lifting it on one lifts it on both.
    listed: list[Any] = (await a.get("/api/v1/auth/lockouts", headers=admin)).json()
    assert [(lk["kind"], lk["key"], lk["failures"]) for lk in listed] == [("username", "ada", 4)]
    lifted = await b.delete("/api/v1/auth/lockouts/username/ada", headers=admin)
    assert lifted.json()["was_locked_out"] is True
    assert (await a.get("/api/v1/auth/lockouts", headers=admin)).json() == []
    assert (await _login(a, "right-pass-1")).status_code == 200
