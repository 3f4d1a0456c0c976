"""An app whose supervisors drive simulated machines on real ptys."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from microfactory.app import create_app
from microfactory.config import Settings


@pytest.fixture
def live_settings(settings: Settings) -> Settings:
    """The test settings, with supervisors running and dispatch by hand (queue tests opt in)."""
    return settings.model_copy(update={"run_supervisors": True, "auto_dispatch": False})


@pytest.fixture
async def live_app(live_settings: Settings) -> AsyncIterator[Any]:
    application = create_app(live_settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def live_client(live_app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=live_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


async def wait_for(
    check: Callable[[], Any], within: float = 30.0, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll an async or sync check until it returns something truthy (bounded)."""
    async with asyncio.timeout(within):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(interval)


async def machine_state(client: httpx.AsyncClient, headers: dict[str, str], machine_id: int) -> str:
    resp = await client.get(f"/api/v1/machines/{machine_id}", headers=headers)
    return str(resp.json()["status"]["state"])


async def dispatch(
    client: httpx.AsyncClient, headers: dict[str, str], job_id: int, machine_id: int
) -> httpx.Response:
    """Dispatch a job once its machine is idle.

    On a loaded machine a simulated controller's link can drop (its watchdog sees it silent)
    and come back; a dispatch refused because the machine is reconnecting is retried after
    it is idle again, so the answer is the one the test is about.
    """
    for _ in range(5):
        await wait_for(
            lambda: _is_idle(client, headers, machine_id), within=60, what="the machine is idle"
        )
        resp = await client.post(f"/api/v1/jobs/{job_id}/dispatch", headers=headers)
        if resp.status_code != 409 or "connecting" not in resp.text:
            break
    return resp


async def _is_idle(client: httpx.AsyncClient, headers: dict[str, str], machine_id: int) -> bool:
    return await machine_state(client, headers, machine_id) == "idle"


async def job_json(
    client: httpx.AsyncClient, headers: dict[str, str], job_id: int
) -> dict[str, Any]:
    return dict((await client.get(f"/api/v1/jobs/{job_id}", headers=headers)).json())


def shared_file(*parts: str) -> Path:
    from tests.conftest import shared_data_dir

    return shared_data_dir().joinpath(*parts)
