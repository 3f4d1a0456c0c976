"""The machine page's endpoints against supervisors driving simulators on real ptys.

These tests exercise the machines, not the database: they run on SQLite only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from microfactory.app import create_app
from microfactory.config import Settings
from tests.conftest import _truncate


@pytest.fixture
def db_url(sqlite_database: str) -> str:
    """SQLite only (the endpoints hold no transaction while they talk to a machine)."""
    _truncate(sqlite_database)
    return sqlite_database


@pytest.fixture
async def live_app(settings: Settings) -> AsyncIterator[Any]:
    application = create_app(
        settings.model_copy(update={"run_supervisors": True, "auto_dispatch": False})
    )
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def live_client(live_app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=live_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.fixture
async def app(live_app: Any) -> Any:
    """`make_user` and the role fixtures use the live app."""
    return live_app
