"""What members see of a failed job names no server path and no stored file name.

A job's failure reason and preparation log are written by the supervisor and by the tools
(OpenSCAD and PrusaSlicer name their inputs by absolute paths in the job's work folder);
the API and the dashboard scrub them where they leave the server.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from microfactory.app import create_app
from microfactory.config import Settings
from microfactory.jobs.models import Job
from tests.conftest import UserFactory
from tests.integration.conftest import dispatch, job_json, machine_state, wait_for

CSRF = "test-csrf-token-value"
STORED_NAME = re.compile(r"\b[0-9a-f]{32}\b")
PROGRAM = b"G21\nG90\nG0 Z5\nG1 X10 Y10 F600\nG1 X0 Y0\n"


def _leaks(text: str, data_dir: str) -> list[str]:
    found = [data_dir] if data_dir in text else []
    found += STORED_NAME.findall(text)
    found += [p for p in ("/work/", "/files/") if p in text]
    return found


@pytest.fixture
def live_settings(settings: Settings) -> Settings:
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


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_failure_reason_and_preparation_log_name_no_internal_paths(
    live_client: httpx.AsyncClient,
    live_app: Any,
    live_settings: Settings,
    make_user: UserFactory,
) -> None:
    client = live_client
    _, operator = await make_user("operator")
    _, member = await make_user("member", username="maria", password="maria-pass-1")
    machine = (
        await client.post(
            "/api/v1/machines",
            json={
                "name": "Mill",
                "kind": "cnc_mill",
                "driver": "sim-grbl",
                "connection": {"speed_factor": 50},
            },
            headers=operator,
        )
    ).json()
    await wait_for(
        lambda: _is_idle(client, operator, machine["id"]), what="the simulated mill connects"
    )
    job = (
        await client.post(
            "/api/v1/jobs",
            files={"file": ("bracket.nc", PROGRAM, "text/plain")},
            data={"machine_id": str(machine["id"])},
            headers=member,
        )
    ).json()
    await client.post(f"/api/v1/jobs/{job['id']}/approve", headers=operator)
    data_dir = str(live_settings.data_dir)
    # The stored file vanished from the data dir: the job fails at start, saying so.
    async with live_app.state.sessionmaker() as session:
        stored_name = (await session.get(Job, job["id"])).stored_name  # type: ignore[union-attr]
    (live_settings.upload_dir / stored_name).unlink()
    refused = await dispatch(client, operator, job["id"], machine["id"])
    assert refused.status_code == 409
    assert not _leaks(refused.text, data_dir), refused.text

    # A tool's log, as OpenSCAD writes it, on the same job.
    work = live_settings.data_dir / "work" / str(job["id"])
    tool_log = (
        f'ERROR: Parser error in file "{work}/bracket.scad", line 2: syntax error\n'
        f"Can't open input file '{work}/{stored_name}'!\n"
        "see https://en.wikibooks.org/wiki/OpenSCAD_User_Manual/Include_Statement\n"
    )
    async with live_app.state.sessionmaker() as session, session.begin():
        await session.execute(
            update(Job).where(Job.id == job["id"]).values(preparation_log=tool_log)
        )

    shown = await job_json(client, member, job["id"])
    assert shown["state"] == "failed"
    assert "missing from storage" in shown["failure_reason"]
    assert stored_name in tool_log  # the test's premise: the raw texts do leak
    for text in (shown["failure_reason"], shown["preparation_log"]):
        assert not _leaks(text, data_dir), text
    assert 'file "bracket.scad", line 2' in shown["preparation_log"]
    assert (
        "https://en.wikibooks.org/wiki/OpenSCAD_User_Manual/Include_Statement"
        in (shown["preparation_log"])
    )
    listed = await client.get("/api/v1/jobs", headers=member)
    events = await client.get(f"/api/v1/jobs/{job['id']}/events", headers=member)
    for resp in (listed, events):
        assert resp.status_code == 200
        assert not _leaks(resp.text, data_dir), resp.text

    # The dashboard's job page, as the member sees it.
    browser = httpx.AsyncClient(transport=client._transport, base_url="http://testserver")
    browser.cookies.set("mf_csrf", CSRF)
    logged_in = await browser.post(
        "/login", data={"username": "maria", "password": "maria-pass-1", "csrf_token": CSRF}
    )
    assert logged_in.status_code == 303
    page = await browser.get(f"/jobs/{job['id']}")
    assert page.status_code == 200
    assert "missing from storage" in page.text
    assert not _leaks(page.text, data_dir), page.text


async def _is_idle(client: httpx.AsyncClient, headers: dict[str, str], machine_id: int) -> bool:
    return await machine_state(client, headers, machine_id) == "idle"
