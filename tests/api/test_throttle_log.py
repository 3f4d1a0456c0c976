"""Failed logins and lockouts are logged (once per lockout, not once per refused attempt)."""

from __future__ import annotations

import logging

import httpx
import pytest

from microfactory.config import Settings
from tests.conftest import UserFactory


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"login_max_failures_per_username": 3, "login_refusal_delay_s": 0}
    )


async def test_failed_logins_and_the_lockout_are_logged(
    client: httpx.AsyncClient, make_user: UserFactory, caplog: pytest.LogCaptureFixture
) -> None:
    await make_user("member", username="maria", password="maria-pass-1")
    caplog.set_level(logging.INFO, logger="microfactory.accounts")
    form = {"username": "maria", "password": "wrong"}
    for _ in range(3):
        assert (await client.post("/api/v1/auth/token", data=form)).status_code == 401
    for _ in range(3):
        assert (await client.post("/api/v1/auth/token", data=form)).status_code == 429
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("login_failed") == 3
    assert events.count("login_locked_out") == 1
    locked = next(r for r in caplog.records if getattr(r, "event", None) == "login_locked_out")
    assert "maria" in locked.getMessage()
    assert "wrong" not in caplog.text  # the password is never logged
