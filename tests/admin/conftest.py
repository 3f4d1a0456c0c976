"""Admin page fixtures: a logged-in browser client per role (session and CSRF cookies)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from microfactory.accounts import service as account_service
from microfactory.accounts.models import Role, TokenKind, User
from microfactory.accounts.security import hash_password

CSRF = "admin-test-csrf-token"
WebClient = Callable[..., Awaitable[tuple[httpx.AsyncClient, User]]]


@pytest.fixture
def db_url(sqlite_database: str) -> str:
    """SQLite only: these pages call services whose rules run on both databases in tests/api,
    tests/bookings and tests/runtime; a second backend here would double the time for little."""
    from tests.conftest import _truncate

    _truncate(sqlite_database)
    return sqlite_database


@pytest.fixture(scope="session")
def password_hash() -> str:
    """One argon2 hash for every page user: each hash costs about 0.1 s of CPU (seconds on a
    loaded machine), and these users come in with a session cookie, never a password."""
    return hash_password("pass-word-1")


@pytest.fixture
def web_client(app: Any, client: httpx.AsyncClient, password_hash: str) -> WebClient:
    """Return a factory of dashboard clients logged in as a new user of a role."""

    async def factory(
        role: Role = Role.ADMIN, name: str = "boss"
    ) -> tuple[httpx.AsyncClient, User]:
        async with app.state.sessionmaker() as session:
            user = User(username=name, role=role, password_hash=password_hash)
            session.add(user)
            await session.flush()
            token, _ = await account_service.issue_token(
                session=session, user=user, kind=TokenKind.WEB
            )
            await session.commit()
        web = httpx.AsyncClient(transport=client._transport, base_url="http://testserver")
        web.cookies.set("mf_session", token)
        web.cookies.set("mf_csrf", CSRF)
        return web, user

    return factory
