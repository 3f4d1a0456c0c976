"""Admin page fixtures: a logged-in browser client per role (session and CSRF cookies)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from microfactory.accounts import service as account_service
from microfactory.accounts.models import Role, TokenKind, User
from microfactory.accounts.schemas import UserCreate

CSRF = "admin-test-csrf-token"
WebClient = Callable[..., Awaitable[tuple[httpx.AsyncClient, User]]]


@pytest.fixture
def web_client(app: Any, client: httpx.AsyncClient) -> WebClient:
    """Return a factory of dashboard clients logged in as a new user of a role."""

    async def factory(
        role: Role = Role.ADMIN, name: str = "boss"
    ) -> tuple[httpx.AsyncClient, User]:
        async with app.state.sessionmaker() as session:
            user = await account_service.create(
                session=session,
                user_in=UserCreate(username=name, password="pass-word-1", role=role),
            )
            token, _ = await account_service.issue_token(
                session=session, user=user, kind=TokenKind.WEB
            )
            await session.commit()
        web = httpx.AsyncClient(transport=client._transport, base_url="http://testserver")
        web.cookies.set("mf_session", token)
        web.cookies.set("mf_csrf", CSRF)
        return web, user

    return factory
